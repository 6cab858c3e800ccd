#!/usr/bin/env node
// Training step time (batch 4 of 256 x 256 RGB crops, 2 classes, ce-dice loss, Adam) of U-Net (base 32, other options
// default), FCN-8s (default) and DeepLabv3+ (default) on tfjs wasm with 1 and 2 training workers, on the tfjs cpu
// backend, and in PyTorch on the CPU (bench/torch_models.py: the same layers and weight counts, asserted). The direct1
// and direct2 configurations are wasm with Tessera's Winograd 3x3 convolutions turned off (TESSERA_WINOGRAD=0), the
// baseline of that change.
//
//   node bench/train-step.mjs                                   # everything, about 15 minutes on 2 cores
//   node bench/train-step.mjs --models unet --configs wasm1,wasm2 --warmup 1 --steps 2
//   options: --models a,b  --configs wasm1,wasm2,cpu,torch,direct1,direct2  --warmup 4  --steps 8  --batch 4  --tile 256
//            --cpu-batch 1  --cpu-tile 64  --torch-threads 2  --python /usr/bin/python3
//
// Needs the packages built (npm run build, or npx tsc -b packages/core packages/arch-unet packages/arch-fcn8s
// packages/arch-deeplab). Each configuration runs in its own child process through the real trainer
// (defaultTrainer: one epoch of warmup + steps steps, no validation, no augmentation); a step's time is the time
// between two consecutive step events, so it includes building the batch (cheap without augmentation) and, with
// workers, moving gradients and weights between threads. The first `warmup` steps are not timed: on the wasm engine
// the first steps run slower as V8 tiers up the JavaScript and WebAssembly code (DeepLabv3+ on 2 workers: 0.98, 0.47,
// 0.42, 0.38 s, then 0.34-0.40 s), and one step varies by 10-20% on a shared 2-core machine, so the default times the
// median of 8 steps after 4 (PyTorch gets the same counts; it is steady from its second step).
// The tfjs cpu backend is very slow (minutes per 256 x 256 crop for U-Net): it runs 1 step (no warm-up) of batch
// --cpu-batch at --cpu-tile, scaled linearly by crops and pixels to --batch at --tile.
// PyTorch: Debian's python3-torch (apt-get update && apt-get install -y python3-torch) or pip install torch;
// without it the torch column is skipped.
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PACKAGES = {
  // U-Net base 32 at the default micro-batch (2 crops of 256) overflows the 2 GB wasm heap ("memory access out of
  // bounds"): its steps run in micro-batches of 1 crop (4 per step), on every engine.
  unet: { name: '@tessera/arch-unet', options: { baseFilters: 32 }, microBatch: 1 },
  fcn8s: { name: '@tessera/arch-fcn8s', options: {} },
  deeplabv3plus: { name: '@tessera/arch-deeplab', options: {} },
};

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Child: one configuration, timed through the trainer; prints one JSON line. */
async function child(job) {
  const core = await import('@tessera/core');
  await core.setupEngine(job.engine);
  const url = pathToFileURL(createRequire(join(ROOT, 'noop.js')).resolve(PACKAGES[job.model].name)).href;
  const plugin = (await import(url)).default();
  const options = core.resolveArchitectureOptions(plugin, PACKAGES[job.model].options);
  const model = plugin.build({ inputChannels: 3, numClasses: 2, tileSize: job.tile, options, seed: 1 });
  const total = core.countParameters(model);
  const trainable = model.trainableWeights.reduce((s, w) => s + w.shape.reduce((a, b) => a * b, 1), 0);
  model.dispose();
  if (job.steps === 0) {
    process.stdout.write(JSON.stringify({ total, trainable }) + '\n');
    return;
  }
  const times = [];
  let workers = 0;
  let workersReason = '';
  let last = 0;
  const out = join(job.dir, `out-${job.model}-${job.engine}-${job.workers}-${process.pid}`);
  await core.defaultTrainer().train({
    architecture: plugin,
    architectureOptions: PACKAGES[job.model].options,
    images: join(job.dir, 'images'),
    masks: join(job.dir, 'masks'),
    out,
    options: {
      tileSize: job.tile,
      batchSize: job.batch,
      epochs: 1,
      stepsPerEpoch: job.warmup + job.steps,
      valSplit: 0,
      augment: false,
      workers: job.workers,
      ...(PACKAGES[job.model].microBatch ? { microBatch: PACKAGES[job.model].microBatch } : {}),
      seed: 1,
    },
    pluginModules: [url],
    onEvent: (e) => {
      const now = performance.now();
      if (e.type === 'start') ({ workers, workersReason } = e);
      if (e.type === 'start' || e.type === 'step') {
        if (e.type === 'step') times.push((now - last) / 1000);
        last = now;
      }
    },
  });
  await rm(out, { recursive: true, force: true });
  process.stdout.write(
    JSON.stringify({ ...job, total, trainable, workers, workersReason, seconds: times.slice(job.warmup) }) + '\n',
  );
}

function findPython() {
  const candidates = [arg('python'), process.env.PYTHON, 'python3', '/usr/bin/python3'].filter(Boolean);
  for (const python of candidates) {
    const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (r.status === 0) return { python, version: r.stdout.trim() };
  }
  return undefined;
}

function runJson(command, args, env = process.env) {
  const r = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 24, env });
  const line = (r.stdout ?? '').trim().split('\n').pop();
  try {
    const result = JSON.parse(line);
    if (r.status !== 0 && !result.error) result.error = `exit status ${r.status}`;
    return result;
  } catch {
    const lines = (r.stderr ?? '').trim().split('\n');
    const cause = lines.find((l) => /Error\b|error:/.test(l)) ?? lines.slice(-3).join(' | ');
    return { error: `exit status ${r.status}: ${cause.trim()}` };
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};

async function main() {
  const models = arg('models', 'unet,fcn8s,deeplabv3plus').split(',');
  const configs = arg('configs', 'wasm1,wasm2,cpu,torch').split(',');
  const warmup = Number(arg('warmup', 4));
  const steps = Number(arg('steps', 8));
  const batch = Number(arg('batch', 4));
  const tile = Number(arg('tile', 256));
  const cpuBatch = Number(arg('cpu-batch', 1));
  const cpuTile = Number(arg('cpu-tile', 64));
  const cpuScale = (batch / cpuBatch) * (tile / cpuTile) ** 2;
  const torchThreads = Number(arg('torch-threads', 2));
  const python = configs.includes('torch') ? findPython() : undefined;
  if (configs.includes('torch') && !python) {
    console.log(
      'PyTorch not found (tried python3, /usr/bin/python3): skipping the torch column. Install it with\n' +
        '  apt-get update && apt-get install -y python3-torch   # Debian, PyTorch 1.13 for /usr/bin/python3\n' +
        'or pip install torch, or pass --python <interpreter with torch>.',
    );
  }
  console.log(
    `machine: ${cpus()[0]?.model ?? 'cpu'} x ${availableParallelism()}, load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(
        ' ',
      )}; node ${process.version}${python ? `; torch ${python.version} (${python.python}), ${torchThreads} threads` : ''}`,
  );
  console.log(
    `step: batch ${batch} of ${tile} x ${tile} RGB crops, 2 classes, ce-dice, Adam; ${warmup} warm-up and ${steps} timed steps (median)`,
  );

  const dir = await mkdtemp(join(tmpdir(), 'tessera-train-step-'));
  const core = await import('@tessera/core');
  await mkdir(join(dir, 'images'));
  await mkdir(join(dir, 'masks'));
  const rng = core.createRandom(7);
  const side = Math.max(320, tile + 64);
  for (let i = 0; i < 4; i++) {
    const { image, mask } = core.randSyntheticTissue({ width: side, height: side, density: 30 }, rng.fork(i));
    await core.writePng(join(dir, 'images', `s${i}.png`), image);
    await core.writePng(join(dir, 'masks', `s${i}.png`), { data: mask.data, width: side, height: side, channels: 1 });
  }

  const self = fileURLToPath(import.meta.url);
  const rows = [];
  try {
    for (const model of models) {
      const row = { model };
      const job = (engine, workers, b, w, s, t = tile, env = process.env) =>
        runJson(
          process.execPath,
          [self, '--child', JSON.stringify({ model, engine, workers, batch: b, tile: t, warmup: w, steps: s, dir })],
          env,
        );
      // The direct configurations turn Tessera's Winograd convolutions off (XNNPACK's direct ones, as before them).
      const direct = { ...process.env, TESSERA_WINOGRAD: '0' };
      for (const config of configs) {
        let r;
        if (config === 'wasm1') r = job('wasm', 1, batch, warmup, steps);
        else if (config === 'wasm2') r = job('wasm', 2, batch, warmup, steps);
        else if (config === 'direct1') r = job('wasm', 1, batch, warmup, steps, tile, direct);
        else if (config === 'direct2') r = job('wasm', 2, batch, warmup, steps, tile, direct);
        else if (config === 'cpu') {
          r = job('cpu', 1, cpuBatch, 0, 1, cpuTile);
          if (r.seconds) r.seconds = r.seconds.map((t) => t * cpuScale);
        } else if (config === 'torch') {
          if (!python) continue;
          const counts = row.counts ?? job('wasm', 1, 1, 0, 0); // weight counts of the tfjs model
          r = runJson(python.python, [
            join(ROOT, 'bench', 'torch_models.py'),
            '--model',
            model,
            '--batch',
            String(batch),
            '--tile',
            String(tile),
            '--threads',
            String(torchThreads),
            '--warmup',
            String(warmup),
            '--steps',
            String(steps),
            '--expect-total',
            String(counts.total),
            '--expect-trainable',
            String(counts.trainable),
          ]);
        } else throw new Error(`unknown configuration ${config}`);
        console.log(JSON.stringify({ config, ...r }));
        if (r.total !== undefined && !row.counts) row.counts = { total: r.total, trainable: r.trainable };
        row[config] = r.error ? NaN : median(r.seconds);
        if (r.workers !== undefined && r.workers !== (config.endsWith('2') ? 2 : 1)) {
          console.log(`  note: ${config} ran with ${r.workers} worker(s): ${r.workersReason}`);
        }
      }
      rows.push(row);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const header = [
    'model',
    'weights',
    'torch s',
    'wasm-1w s',
    'wasm-2w s',
    'cpu s',
    'wasm-1w/torch',
    'wasm-2w/torch',
    'wasm-2w/wasm-1w',
    'cpu/wasm-1w',
    'direct-1w s',
    'direct-2w s',
    'direct-2w/wasm-2w',
  ];
  const table = rows.map((r) => [
    r.model,
    r.counts ? r.counts.total.toLocaleString('en-US') : '-',
    f(r.torch),
    f(r.wasm1),
    f(r.wasm2),
    f(r.cpu, 1),
    f(r.wasm1 / r.torch),
    f(r.wasm2 / r.torch),
    f(r.wasm2 / r.wasm1),
    f(r.cpu / r.wasm1, 1),
    f(r.direct1),
    f(r.direct2),
    f(r.direct2 / r.wasm2),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(`\nseconds per training step (median), ratios of those; load average now ${loadavg()[0].toFixed(2)}`);
  console.log(line(header));
  for (const t of table) console.log(line(t));
  console.log(
    `tfjs micro-batches: ${models
      .map((m) => `${m} ${PACKAGES[m].microBatch ?? 'default (2 crops of 256)'}`)
      .join(', ')}; torch runs the batch of ${batch} at once\n` +
      `cpu: 1 step of batch ${cpuBatch} at ${cpuTile} x ${cpuTile}, scaled x${cpuScale}; torch: weight counts asserted equal to the tfjs models' countParameters and trainable weights`,
  );
}

if (process.argv[2] === '--child') await child(JSON.parse(process.argv[3]));
else await main();
