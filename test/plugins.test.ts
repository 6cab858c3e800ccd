/**
 * Acceptance of third-party architecture plugins, on the packages as users get them: `npm pack` tarballs of the
 * workspace packages and of the example plugin `examples/arch-linknet`, installed into temporary projects outside the
 * workspace (third-party dependencies come from npm's cache or the registry).
 *
 * a. `@tessera/core` + `@tessera/arch-unet` + `@tessera/cli` alone: `tessera archs` lists only U-Net; train, predict.
 * b. The same plus `tessera-arch-linknet`: its own conformance tests pass there; `tessera archs` lists it as a
 *    package; train and predict with `--arch linknet`.
 * c. `tessera create-plugin` writes a package that passes the kit as written; broken copies fail with clear messages.
 * d-m. The traps between the guide and a working plugin (issue #17), each with its own case: a consumer project that
 *    installs offline with `@tessera/onnx` (no skip configured), the TypeScript example `examples/arch-attention-unet`
 *    (a layer of its own, declared in `layers`, and its ONNX converter) through check-plugin, train with workers,
 *    evaluate, predict, export and a slide; layer classes registered in build(); a file plugin named like an installed
 *    one; a second copy of core; logits and hard-coded class counts; incompatible installed plugins; the TypeScript
 *    scaffold; missing imports.
 *
 * Needs `npm run build` first (the tarballs hold `dist/`). Keep `TESSERA_KEEP_ACCEPTANCE=1` to keep the temp folder.
 * `TESSERA_ACCEPTANCE_PACK_ROOT=<checkout>` packs the workspace packages of another built checkout (to see these
 * cases fail on an older build); the example plugins always come from this one.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import {
  ARCHITECTURE_API_VERSION,
  CORE_VERSION,
  createRandom,
  randSyntheticTissue,
  readImage,
  writePng,
} from '@tessera/core';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PACK_ROOT = process.env.TESSERA_ACCEPTANCE_PACK_ROOT ?? ROOT;
const EXAMPLE = join(ROOT, 'examples/arch-linknet');
const ATTENTION_EXAMPLE = join(ROOT, 'examples/arch-attention-unet');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/**
 * The environment of every child process: without the npm_* variables of an enclosing `npm test` (a `prefix` from the
 * workspace would install into it) nor vitest's own, with the wasm engine and onnxruntime's download skipped.
 */
const ENV: NodeJS.ProcessEnv = {
  ...Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) =>
        !/^(npm_|VITEST|TINYPOOL|INIT_CWD$)/i.test(key) || /^npm_config_(cache|registry|userconfig)$/i.test(key),
    ),
  ),
  // onnxruntime-node's installer reads this variable (npm 11 warns about the npm_config_ spelling as an unknown key).
  ONNXRUNTIME_NODE_INSTALL: 'skip',
  npm_config_update_notifier: 'false',
  TESSERA_BACKEND: 'wasm',
  NO_COLOR: '1',
};

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a consumer project's `npm install` in case d: no `onnxruntime-node-install` setting at all, and
 * an unreachable proxy for onnxruntime-node's downloader (it honours `GLOBAL_AGENT_HTTPS_PROXY`), so any attempt to
 * download its CUDA provider fails the install, also on a machine with internet access.
 */
const OFFLINE_ENV: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries({
    ...ENV,
    GLOBAL_AGENT_HTTPS_PROXY: 'http://127.0.0.1:9',
    GLOBAL_AGENT_HTTP_PROXY: 'http://127.0.0.1:9',
  }).filter(([key]) => !/onnxruntime_node_install/i.test(key)),
);

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = ENV): Result {
  const r = spawnSync(command, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command that must succeed; fails with its output otherwise. */
function must(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = ENV): Result {
  const r = run(command, args, cwd, env);
  if (r.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} (in ${cwd}) exited with ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r;
}

/** The installed `tessera` command of a project, as npm linked it. */
function tessera(project: string, args: string[]): Result {
  return run(join(project, 'node_modules/.bin/tessera'), args, project);
}

const seconds: Record<string, number> = {};
function timed<R>(what: string, fn: () => R): R {
  const start = performance.now();
  try {
    return fn();
  } finally {
    seconds[what] = Math.round((performance.now() - start) / 100) / 10;
  }
}

let work: string;
let images: string;
let masks: string;
let classes: string;
const tarballs: Record<string, string> = {};
let packed: { name: string; filename: string; files: { path: string }[] }[];

/** A fresh project folder in which only `specs` (tarball paths, or registry specs) are installed. */
async function project(name: string, specs: string[], env: NodeJS.ProcessEnv = ENV): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir);
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: `acceptance-${name}`, private: true }) + '\n');
  timed(`npm install (${name})`, () =>
    must(NPM, ['install', '--no-audit', '--no-fund', '--prefer-offline', ...specs], dir, env),
  );
  return dir;
}

/** Tiny training run: 1 epoch of 2 steps on 32x32 crops. */
function trainArgs(out: string, arch: string[]): string[] {
  return [
    'train',
    ...arch,
    '--images',
    images,
    '--masks',
    masks,
    '--classes',
    classes,
    '--out',
    out,
    '--epochs',
    '1',
    '--steps-per-epoch',
    '2',
    '--tile',
    '32',
    '--batch',
    '2',
    '--json',
  ];
}

/** Trains with `arch` in `dir`, predicts the images, and checks the model folder and the label maps. */
async function trainAndPredict(dir: string, arch: string[], expected: { name: string; version: string }) {
  const model = join(dir, 'model');
  const train = timed(`train ${expected.name}`, () => tessera(dir, trainArgs(model, arch)));
  expect(train.code, train.stderr).toBe(0);
  for (const file of ['model.json', 'weights.bin', 'manifest.json'])
    expect(existsSync(join(model, file)), file).toBe(true);
  const manifest = JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8'));
  expect(manifest.architecture).toMatchObject(expected);
  const out = join(dir, 'predictions');
  const predict = timed(`predict ${expected.name}`, () =>
    tessera(dir, ['predict', '--model', model, images, '--out', out]),
  );
  expect(predict.code, predict.stderr).toBe(0);
  for (let i = 0; i < 3; i++) {
    const labels = await readImage(join(out, `tile-${i}_labels.png`));
    expect([labels.width, labels.height]).toEqual([64, 64]);
  }
}

beforeAll(async () => {
  for (const pkg of ['packages/core', 'packages/arch-unet', 'apps/cli']) {
    if (!existsSync(join(PACK_ROOT, pkg, 'dist/index.js'))) {
      throw new Error(`${pkg}/dist is missing: run "npm run build" at the repository root first.`);
    }
  }
  work = await realpath(await mkdtemp(join(tmpdir(), 'tessera-acceptance-')));
  const packs = join(work, 'tarballs');
  await mkdir(packs);
  const workspaces = ['@tessera/core', '@tessera/arch-unet', '@tessera/cli', '@tessera/onnx', '@tessera/tiler'];
  packed = timed('npm pack', () => [
    ...JSON.parse(
      must(
        NPM,
        ['pack', '--json', '--pack-destination', packs, ...workspaces.flatMap((w) => ['--workspace', w])],
        PACK_ROOT,
      ).stdout,
    ),
    ...JSON.parse(must(NPM, ['pack', '--json', '--pack-destination', packs], EXAMPLE).stdout),
    // A TypeScript package: npm pack builds its dist/ first (prepack).
    ...JSON.parse(must(NPM, ['pack', '--json', '--pack-destination', packs], ATTENTION_EXAMPLE).stdout),
  ]) as { name: string; filename: string; files: { path: string }[] }[];
  for (const p of packed) tarballs[p.name] = join(packs, p.filename);
  expect(Object.keys(tarballs).sort()).toEqual(
    [...workspaces, 'tessera-arch-linknet', 'tessera-arch-attention-unet'].sort(),
  );
  const cliFiles = packed.find((p) => p.name === '@tessera/cli')!.files.map((f) => f.path);
  expect(cliFiles).toEqual(expect.arrayContaining(['dist/bin.js', 'templates/plugin/index.js', 'README.md']));

  images = join(work, 'data/images');
  masks = join(work, 'data/masks');
  classes = join(work, 'data/classes.json');
  await mkdir(images, { recursive: true });
  await mkdir(masks, { recursive: true });
  const rng = createRandom(5);
  for (let i = 0; i < 3; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(images, `tile-${i}.png`), image);
    await writePng(join(masks, `tile-${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
  await writeFile(
    classes,
    JSON.stringify({
      classes: [
        { name: 'background', value: 0, color: '#000000' },
        { name: 'nucleus', value: 1, color: '#0000ff' },
      ],
    }),
  );
}, 180_000);

afterAll(async () => {
  console.log(`acceptance timings (s): ${JSON.stringify(seconds, null, 1)}`);
  if (work && !process.env.TESSERA_KEEP_ACCEPTANCE) await rm(work, { recursive: true, force: true });
});

describe('architecture plugins installed from tarballs, outside the workspace', () => {
  const TINY_UNET = ['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'];
  let withLinknet: string;

  it('a. core + arch-unet + cli alone: tessera archs lists only unet; train and predict work', async () => {
    const dir = await project('unet-only', [
      tarballs['@tessera/core'],
      tarballs['@tessera/arch-unet'],
      tarballs['@tessera/cli'],
    ]);
    // Nothing else of Tessera came along (no fcn8s, deeplab or tiler from the registry).
    expect(readdirSync(join(dir, 'node_modules/@tessera')).sort()).toEqual(['arch-unet', 'cli', 'core']);
    const archs = timed('archs (unet only)', () => tessera(dir, ['archs', '--json']));
    expect(archs.code, archs.stderr).toBe(0);
    const listed = JSON.parse(archs.stdout) as { name: string; source: string; inputMultiple: number }[];
    expect(listed.map((a) => [a.name, a.source, a.inputMultiple])).toEqual([
      ['unet', 'package @tessera/arch-unet', 16],
    ]);
    await trainAndPredict(dir, TINY_UNET, { name: 'unet', version: '0.1.0' });
  }, 240_000);

  it('b. plus tessera-arch-linknet: its conformance tests pass there; archs lists it; train and predict', async () => {
    withLinknet = await project('with-linknet', [
      tarballs['@tessera/core'],
      tarballs['@tessera/arch-unet'],
      tarballs['@tessera/cli'],
      tarballs['tessera-arch-linknet'],
      'vitest@3.2.4',
    ]);
    const dir = withLinknet;
    const archs = timed('archs (unet, linknet)', () => tessera(dir, ['archs', '--json']));
    expect(archs.code, archs.stderr).toBe(0);
    const listed = JSON.parse(archs.stdout) as { name: string; source: string; inputMultiple: number }[];
    expect(listed.map((a) => [a.name, a.source, a.inputMultiple])).toEqual([
      ['unet', 'package @tessera/arch-unet', 16],
      ['linknet', 'package tessera-arch-linknet', 64],
    ]);

    // The example's own test file, against the installed package instead of its source folder.
    const test = await readFile(join(EXAMPLE, 'index.test.js'), 'utf8');
    expect(test).toContain("from './index.js'");
    await writeFile(join(dir, 'linknet.test.js'), test.replace("from './index.js'", "from 'tessera-arch-linknet'"));
    const conformance = timed('linknet conformance (vitest)', () =>
      run(join(dir, 'node_modules/.bin/vitest'), ['run', 'linknet.test.js'], dir),
    );
    expect(conformance.code, conformance.stdout + conformance.stderr).toBe(0);
    expect(conformance.stdout).toMatch(/Tests\s+6 passed/);

    await trainAndPredict(dir, ['--arch', 'linknet', '--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'], {
      name: 'linknet',
      version: '0.1.0',
    });
  }, 300_000);

  it('c. tessera create-plugin writes a package that passes the kit; broken copies fail with clear messages', async () => {
    expect(withLinknet, 'case b installs the project this case uses').toBeDefined();
    const dir = withLinknet;
    const plugin = join(dir, 'plugins/tessera-arch-demo-net');
    const created = tessera(dir, ['create-plugin', 'demo-net', '--dir', plugin]);
    expect(created.code, created.stderr).toBe(0);
    expect(readdirSync(plugin).sort()).toEqual([
      '.gitignore',
      'README.md',
      'index.js',
      'index.test.js',
      'package.json',
    ]);
    const pkg = JSON.parse(await readFile(join(plugin, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({
      name: 'tessera-arch-demo-net',
      type: 'module',
      peerDependencies: { '@tessera/core': '^0.1.0' },
    });
    // Writing over it again is refused.
    const again = tessera(dir, ['create-plugin', 'demo-net', '--dir', plugin]);
    expect(again.code).toBe(10);
    expect(again.stderr).toContain('exists and is not empty');

    const vitest = (root: string) => run(join(dir, 'node_modules/.bin/vitest'), ['run', '--root', root], dir);
    const fresh = timed('scaffold conformance (vitest)', () => vitest(plugin));
    expect(fresh.code, fresh.stdout + fresh.stderr).toBe(0);
    expect(fresh.stdout).toMatch(/Tests\s+5 passed/);
    const archs = tessera(dir, ['archs', '--json', '--arch', './plugins/tessera-arch-demo-net/index.js']);
    expect(archs.code, archs.stderr).toBe(0);
    expect(JSON.parse(archs.stdout).map((a: { name: string; source: string }) => [a.name, a.source])).toContainEqual([
      'demo-net',
      `file ${join(plugin, 'index.js')}`,
    ]);

    // One class too many in the output layer: the kit names the architecture, the case and the shapes.
    const wrongClasses = join(dir, 'plugins/wrong-classes');
    await cp(plugin, wrongClasses, { recursive: true });
    const source = await readFile(join(plugin, 'index.js'), 'utf8');
    expect(source).toContain('filters: numClasses,');
    await writeFile(join(wrongClasses, 'index.js'), source.replace('filters: numClasses,', 'filters: numClasses + 1,'));
    const broken = timed('broken scaffold (vitest)', () => vitest(wrongClasses));
    expect(broken.code).not.toBe(0);
    expect(broken.stdout + broken.stderr).toMatch(
      /Expected output shape \[1, 8, 4, 2\] from architecture "demo-net" with options \{"depth":2,"filters":16\} on a \[1, 8, 4, 1\] input but received \[1, 8, 4, 3\]/,
    );

    // Written for another plugin API: refused on loading, naming both versions, exit code 8.
    const otherApi = join(dir, 'plugins/other-api');
    await cp(plugin, otherApi, { recursive: true });
    expect(source).toContain('apiVersion: ARCHITECTURE_API_VERSION,');
    await writeFile(
      join(otherApi, 'index.js'),
      source.replace('apiVersion: ARCHITECTURE_API_VERSION,', 'apiVersion: 99,'),
    );
    const refused = tessera(dir, ['archs', '--arch', './plugins/other-api/index.js']);
    expect(refused.code).toBe(8);
    expect(refused.stderr).toContain(
      `Architecture "demo-net" from file ${join(otherApi, 'index.js')} was written for plugin API version 99, but this @tessera/core speaks version 1.`,
    );
  }, 240_000);
});

describe('the traps between the guide and a working plugin (#17)', () => {
  /** The consumer project of cases d-m: the packed packages, the Attention U-Net example and vitest. */
  let consumer: string;
  const SMALL = ['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'];
  beforeAll(async () => {
    consumer = await project('consumer', [
      tarballs['@tessera/core'],
      tarballs['@tessera/arch-unet'],
      tarballs['@tessera/cli'],
      tarballs['@tessera/onnx'],
      tarballs['@tessera/tiler'],
      tarballs['tessera-arch-attention-unet'],
      'vitest@3.2.4',
    ]);
  }, 300_000);
  const needConsumer = () => expect(consumer, 'the project of the cases is installed').toBeDefined();
  /** Output of a command, both streams, for messages. */
  const both = (r: Result) => r.stdout + r.stderr;
  /** A tiny training run in the consumer project with `arch` flags. */
  const train = (out: string, arch: string[], extra: string[] = []) =>
    tessera(consumer, [...trainArgs(join(consumer, out), arch), ...extra]);
  /** A JS plugin folder `plugins/<name>` made by the scaffold, with `edit` applied to its index.js; returns its path. */
  const scaffold = async (name: string, edit: (source: string) => string) => {
    const dir = join(consumer, 'plugins', name);
    must(join(consumer, 'node_modules/.bin/tessera'), ['create-plugin', name, '--dir', dir, '--quiet'], consumer);
    const source = await readFile(join(dir, 'index.js'), 'utf8');
    const edited = edit(source);
    expect(edited, `the edit of ${name} applies to the scaffold`).not.toBe(source);
    await writeFile(join(dir, 'index.js'), edited);
    return join(dir, 'index.js');
  };

  it('m. packaging: every tarball has its README and no dist/.tsbuildinfo; the TypeScript example ships dist only', () => {
    for (const p of packed) {
      const files = p.files.map((f) => f.path);
      expect(files, p.name).toContain('README.md');
      expect(
        files.filter((f) => f.endsWith('.tsbuildinfo')),
        p.name,
      ).toEqual([]);
    }
    const attention = packed.find((p) => p.name === 'tessera-arch-attention-unet')!.files.map((f) => f.path);
    expect(attention.sort()).toEqual(
      [
        'README.md',
        'dist/attention-gate.d.ts',
        'dist/attention-gate.js',
        'dist/index.d.ts',
        'dist/index.js',
        'package.json',
      ].sort(),
    );
  });

  it('d. a consumer project installs @tessera/cli with @tessera/onnx offline, with no onnxruntime setting', async () => {
    const dir = await project(
      'offline',
      [tarballs['@tessera/core'], tarballs['@tessera/arch-unet'], tarballs['@tessera/cli'], tarballs['@tessera/onnx']],
      OFFLINE_ENV,
    );
    if (process.platform === 'linux' && process.arch === 'x64') {
      // onnxruntime-node's installer found the names it checks and downloaded nothing; they are markers, no library.
      const bin = join(dir, 'node_modules/onnxruntime-node/bin/napi-v6/linux/x64');
      const marker = await readFile(join(bin, 'libonnxruntime_providers_cuda.so'), 'utf8');
      expect(marker).toContain('Not a library: written by @tessera/onnx');
    }
    const doctor = tessera(dir, ['doctor', '--json']);
    expect(doctor.code, doctor.stderr).toBe(0);
    expect(JSON.parse(doctor.stdout).onnx).toMatchObject({ available: true, cuda: false });
    expect(doctor.stdout).toContain('ONNXRUNTIME_NODE_INSTALL=1 npm rebuild onnxruntime-node');
    // The CPU runtime works: a tiny model trained and predicted through onnxruntime.
    const model = join(dir, 'model');
    const trained = tessera(dir, trainArgs(model, ['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4']));
    expect(trained.code, trained.stderr).toBe(0);
    const predicted = tessera(dir, ['predict', '--model', model, images, '--out', join(dir, 'p'), '--runtime', 'onnx']);
    expect(predicted.code, predicted.stderr).toBe(0);
    expect(predicted.stderr).toMatch(/runtime: onnxruntime-node [\d.]+ \(cpu/);
  }, 300_000);

  it('e. the TypeScript example (own layer in "layers", own ONNX converter): kit, check-plugin, train with workers, evaluate, predict, export, slide', async () => {
    needConsumer();
    // Its own tests, against the installed package.
    const test = await readFile(join(ATTENTION_EXAMPLE, 'test/conformance.test.ts'), 'utf8');
    expect(test).toContain("from '../dist/index.js'");
    await writeFile(
      join(consumer, 'attention.test.ts'),
      test
        .replace("from '../dist/index.js'", "from 'tessera-arch-attention-unet'")
        .replace("new URL('../dist/index.js', import.meta.url)", "'tessera-arch-attention-unet'"),
    );
    const kit = timed('attention-unet conformance (vitest)', () =>
      run(join(consumer, 'node_modules/.bin/vitest'), ['run', 'attention.test.ts'], consumer),
    );
    expect(kit.code, both(kit)).toBe(0);
    expect(kit.stdout).toMatch(/Tests\s+7 passed/);

    const check = timed('check-plugin attention-unet', () =>
      tessera(consumer, ['check-plugin', 'attention-unet', ...SMALL, '--json']),
    );
    expect(check.code, both(check)).toBe(0);
    const checks = JSON.parse(check.stdout).checks as { name: string; status: string }[];
    expect(checks.map((c) => [c.name, c.status])).toEqual([
      ['output contract', 'ok'],
      ['input multiple', 'ok'],
      ['save and load', 'ok'],
      ['receptive field', 'ok'],
      ['training', 'ok'],
      ['ONNX export', 'ok'],
    ]);

    // Two training workers rebuild the model with the gate: no fallback to one thread.
    const trained = timed('train attention-unet (2 workers)', () =>
      train('attention', ['--arch', 'attention-unet', ...SMALL], ['--workers', '2', '--micro-batch', '1']),
    );
    expect(trained.code, trained.stderr).toBe(0);
    expect(trained.stderr).toContain('2 training workers');
    expect(trained.stderr).not.toContain('one thread');
    const model = join(consumer, 'attention');

    const evaluated = tessera(consumer, ['evaluate', '--model', model, '--images', images, '--masks', masks, '--json']);
    expect(evaluated.code, evaluated.stderr).toBe(0);
    expect(JSON.parse(evaluated.stdout).pixelAccuracy).toBeGreaterThan(0);

    const predicted = tessera(consumer, ['predict', '--model', model, images, '--out', join(consumer, 'p-attention')]);
    expect(predicted.code, predicted.stderr).toBe(0);
    expect(predicted.stderr).toMatch(/runtime: onnxruntime-node/); // through the gate's converter
    const exported = tessera(consumer, ['export', model]);
    expect(exported.code, exported.stderr).toBe(0);
    // No --backend given: the line says why cpu, not "asked for with --backend".
    expect(exported.stderr).toContain('engine: cpu (1 thread; the default of export; --backend chooses another)');

    // A tiled TIFF is a slide: tfjs in two slide workers, which register the gate from the plugin's module.
    const rng = createRandom(9);
    const { image } = randSyntheticTissue({ width: 512, height: 512, density: 30 }, rng);
    const slide = join(consumer, 'slide.tif');
    await sharp(Buffer.from(image.data), { raw: { width: 512, height: 512, channels: 3 } })
      .tiff({ tile: true, tileWidth: 256, tileHeight: 256, compression: 'deflate' })
      .toFile(slide);
    const slides = join(consumer, 'slides');
    const wsi = timed('slide attention-unet (tfjs, 2 workers)', () =>
      tessera(consumer, [
        'predict',
        '--model',
        model,
        slide,
        '--out',
        slides,
        '--runtime',
        'tfjs',
        '--workers',
        '2',
        '--no-tissue',
      ]),
    );
    expect(wsi.code, wsi.stderr).toBe(0);
    expect((await sharp(join(slides, 'slide_labels.tif')).metadata()).width).toBe(512);
  }, 600_000);

  it('f. a layer class registered in build(): refused by check-plugin, train and the kit, naming the fix', async () => {
    needConsumer();
    const file = await scaffold('in-build', (source) =>
      source
        .replace(
          "import { ARCHITECTURE_API_VERSION, defineArchitecture, layers } from '@tessera/core';",
          `import { ARCHITECTURE_API_VERSION, defineArchitecture, layers, tf } from '@tessera/core';

export class Scale extends layers.layers.Layer {
  static className = 'InBuildScale';
  call(inputs) {
    return tf.mul(Array.isArray(inputs) ? inputs[0] : inputs, 2);
  }
}`,
        )
        .replace(
          'const input = layers.input(',
          'tf.serialization.registerClass(Scale); // the trap\n      const input = layers.input(',
        )
        .replace('let x = input;', "let x = new Scale({ name: 'scale' }).apply(input);"),
    );
    const message =
      'Architecture "in-build" registers its layer class "InBuildScale" (layer "scale") inside build() instead of declaring it in "layers"';
    const checked = tessera(consumer, ['check-plugin', file, '--no-training']);
    expect(checked.code).toBe(8);
    expect(both(checked)).toContain(message);
    expect(both(checked)).toContain('layers: [Scale]');
    const trained = train('in-build-model', ['--arch', file], ['--workers', '2', '--micro-batch', '1']);
    expect(trained.code, trained.stderr).toBe(8);
    expect(trained.stderr).toContain(message);
    // The scaffold's own tests (the kit) fail the same way.
    const kit = run(join(consumer, 'node_modules/.bin/vitest'), ['run', '--root', dirname(file)], consumer);
    expect(kit.code).not.toBe(0);
    expect(both(kit)).toContain(message);
  }, 300_000);

  it('g. --arch ./file wins over an installed plugin of the same name, with a warning; the model records its version', async () => {
    needConsumer();
    const dev = join(consumer, 'plugins/attention-dev');
    await cp(join(consumer, 'node_modules/tessera-arch-attention-unet'), dev, { recursive: true });
    const index = join(dev, 'dist/index.js');
    const source = await readFile(index, 'utf8');
    expect(source).toContain("version: '0.1.0'");
    await writeFile(index, source.replace("version: '0.1.0'", "version: '0.2.0-dev'"));
    const trained = train('attention-dev-model', ['--arch', './plugins/attention-dev/dist/index.js', ...SMALL]);
    expect(trained.code, trained.stderr).toBe(0);
    expect(trained.stderr).toContain(
      `architecture "attention-unet" 0.2.0-dev from file ${index} is used instead of the installed package tessera-arch-attention-unet (version 0.1.0)`,
    );
    const manifest = JSON.parse(await readFile(join(consumer, 'attention-dev-model/manifest.json'), 'utf8'));
    expect(manifest.architecture).toMatchObject({ name: 'attention-unet', version: '0.2.0-dev' });
    // Used with the installed 0.1.0: a warning names both versions.
    const evaluated = tessera(consumer, [
      'evaluate',
      '--model',
      join(consumer, 'attention-dev-model'),
      '--images',
      images,
      '--masks',
      masks,
    ]);
    expect(evaluated.code, evaluated.stderr).toBe(0);
    expect(evaluated.stderr).toContain(
      `the model ${join(consumer, 'attention-dev-model')} was made with architecture "attention-unet" version 0.2.0-dev, but package tessera-arch-attention-unet is version 0.1.0`,
    );
  }, 300_000);

  it('h. a plugin with its own copy of @tessera/core is refused at load time, naming both copies and the fix', async () => {
    needConsumer();
    const file = await scaffold('two-cores', (source) => source.replace("version: '0.1.0'", "version: '0.1.1'"));
    const plugin = dirname(file);
    await cp(join(consumer, 'node_modules/@tessera/core'), join(plugin, 'node_modules/@tessera/core'), {
      recursive: true,
    });
    const trained = train('two-cores-model', ['--arch', file]);
    expect(trained.code, trained.stderr).toBe(8);
    expect(trained.stderr).toContain(
      `would run with a second copy of @tessera/core: it resolves ${join(plugin, 'node_modules/@tessera/core')}, the CLI runs with ${join(consumer, 'node_modules/@tessera/core')}`,
    );
    expect(trained.stderr).toContain(`npm install ${plugin}`);
    const checked = tessera(consumer, ['check-plugin', file, '--no-training']);
    expect(checked.code).toBe(8);
    expect(checked.stderr).toContain('would run with a second copy of @tessera/core');
  }, 300_000);

  it('i. train checks the output contract once: logits and a hard-coded class count stop with the kit messages', async () => {
    needConsumer();
    const logits = await scaffold('logits', (source) =>
      source.replace("activation: 'softmax',", "activation: 'linear',"),
    );
    const fixed = await scaffold('three-classes', (source) => source.replace('filters: numClasses,', 'filters: 3,'));
    const fromLogits = train('logits-model', ['--arch', logits]);
    expect(fromLogits.code, fromLogits.stderr).toBe(8);
    expect(fromLogits.stderr).toMatch(
      /Expected (probabilities in \[0, 1\]|class probabilities summing to 1 per pixel) from architecture "logits"/,
    );
    expect(fromLogits.stderr).toContain('softmax');
    const fromFixed = train('three-classes-model', ['--arch', fixed]);
    expect(fromFixed.code, fromFixed.stderr).toBe(8);
    expect(fromFixed.stderr).toContain(
      'Expected output shape [1, 32, 32, 2] from architecture "three-classes" with options {"depth":2,"filters":16} on a [1, 32, 32, 3] input but received [1, 32, 32, 3].',
    );
    expect(fromFixed.stderr).not.toContain('unexpected failure');
  }, 300_000);

  it('j. an incompatible or broken installed plugin is skipped with a warning; it fails only when asked for', async () => {
    needConsumer();
    const oldApi = join(consumer, 'node_modules/tessera-arch-old-api');
    const broken = join(consumer, 'node_modules/tessera-arch-broken-import');
    const base = await scaffold('j-base', (s) => s.replace("version: '0.1.0'", "version: '0.1.2'"));
    const source = await readFile(base, 'utf8');
    try {
      for (const [dir, name, edit] of [
        [oldApi, 'old-api', (s: string) => s.replace('apiVersion: ARCHITECTURE_API_VERSION,', 'apiVersion: 99,')],
        [broken, 'broken-import', (s: string) => `import 'tessera-not-installed-anywhere';\n${s}`],
      ] as const) {
        await mkdir(dir, { recursive: true });
        await writeFile(
          join(dir, 'package.json'),
          JSON.stringify({ name: `tessera-arch-${name}`, version: '0.1.0', type: 'module', main: 'index.js' }),
        );
        await writeFile(join(dir, 'index.js'), edit(source.replaceAll("'j-base'", `'${name}'`)));
      }
      const archs = tessera(consumer, ['archs', '--json']);
      expect(archs.code, archs.stderr).toBe(0);
      expect(JSON.parse(archs.stdout).map((a: { name: string }) => a.name)).toEqual(['unet', 'attention-unet']);
      expect(archs.stderr).toContain(
        'warning: skipped the installed plugin tessera-arch-old-api: Architecture "old-api" from package tessera-arch-old-api was written for plugin API version 99, but this @tessera/core speaks version 1.',
      );
      expect(archs.stderr).toContain(
        'warning: skipped the installed plugin tessera-arch-broken-import: Architecture plugin package tessera-arch-broken-import imports "tessera-not-installed-anywhere", which cannot be found',
      );
      // An unrelated model evaluates.
      const evaluated = tessera(consumer, [
        'evaluate',
        '--model',
        join(consumer, 'attention'),
        '--images',
        images,
        '--masks',
        masks,
      ]);
      expect(evaluated.code, evaluated.stderr).toBe(0);
      // Asked for: its own error, exit code 8.
      const asked = train('old-api-model', ['--arch', 'old-api']);
      expect(asked.code).toBe(8);
      expect(asked.stderr).toContain(
        'error: Architecture "old-api" from package tessera-arch-old-api was written for plugin API version 99',
      );
    } finally {
      await rm(oldApi, { recursive: true, force: true });
      await rm(broken, { recursive: true, force: true });
    }
  }, 300_000);

  it('k. a file plugin whose imports are not installed is refused with exit code 8 and what to install', async () => {
    needConsumer();
    const file = await scaffold('missing-dep', (source) => `import 'tessera-not-installed-anywhere';\n${source}`);
    const trained = train('missing-dep-model', ['--arch', file]);
    expect(trained.code, trained.stderr).toBe(8);
    expect(trained.stderr).toContain(
      `error: Architecture plugin file ${file} imports "tessera-not-installed-anywhere", which cannot be found`,
    );
    expect(trained.stderr).toContain(`hint: Install the plugin's dependencies (cd ${dirname(file)} && npm install)`);
  }, 120_000);

  it('l. tessera create-plugin --typescript: npm install and npm test pass as written; check-plugin loads dist/', async () => {
    needConsumer();
    const dir = join(consumer, 'plugins/ts-net');
    const created = tessera(consumer, ['create-plugin', 'ts-net', '--typescript', '--dir', dir]);
    expect(created.code, created.stderr).toBe(0);
    expect(readdirSync(dir).sort()).toEqual([
      '.gitignore',
      'README.md',
      'package.json',
      'src',
      'test',
      'tsconfig.json',
    ]);
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({
      name: 'tessera-arch-ts-net',
      exports: { '.': { types: './dist/index.d.ts', default: './dist/index.js' } },
      peerDependencies: { '@tessera/core': '^0.1.0' },
      peerDependenciesMeta: { '@tessera/core': { optional: true } },
    });
    expect(pkg.devDependencies['@tessera/core']).toBeUndefined(); // never a second copy, never the registry
    timed('npm install (ts-net)', () => must(NPM, ['install', '--no-audit', '--no-fund', '--prefer-offline'], dir));
    expect(existsSync(join(dir, 'node_modules/@tessera/core'))).toBe(false);
    const tested = timed('ts-net npm test', () => run(NPM, ['test'], dir));
    expect(tested.code, both(tested)).toBe(0);
    expect(tested.stdout).toMatch(/Tests\s+5 passed/);
    const pack = JSON.parse(must(NPM, ['pack', '--dry-run', '--json'], dir).stdout)[0];
    expect(pack.files.map((f: { path: string }) => f.path).sort()).toEqual(
      ['README.md', 'dist/index.d.ts', 'dist/index.js', 'package.json'].sort(),
    );
    const checked = tessera(consumer, ['check-plugin', './plugins/ts-net/dist/index.js', '--no-training']);
    expect(checked.code, both(checked)).toBe(0);
    expect(checked.stderr).toContain('save and load: ');
  }, 300_000);

  it('n. the guide covers converters, layers, worker loading and API versions, and its kit example runs as written', async () => {
    // Whitespace normalised: line breaks in the prose do not matter.
    const guide = (await readFile(join(PACK_ROOT, 'docs/writing-an-architecture-plugin.md'), 'utf8')).replace(
      /\s+/g,
      ' ',
    );
    // ONNX converters: the field, the graph, the layout, optional inputs, and what happens without one.
    for (const phrase of ['`onnxConverters`', '`OnnxGraph`', '**NCHW**', "''", 'predicts with tfjs instead']) {
      expect(guide, phrase).toContain(phrase);
    }
    // Custom layers are declared, and the guide says where saved models are loaded.
    expect(guide).toContain('layers: [ScaleChannels]');
    expect(guide).toContain('training worker threads');
    expect(guide).toContain('whole-slide worker threads');
    // The kit example keeps the resolved options it passes on, and loads in a fresh thread.
    expect(guide).toContain('const { model, options } = checkOutputContract(plugin, OPTIONS, shape);');
    expect(guide).toContain('checkSaveLoad(plugin, options, model, shape, { module })');
    // checkTraining's default number of steps, as the kit's source has it.
    const kit = await readFile(join(PACK_ROOT, 'packages/core/src/testing/conformance.ts'), 'utf8');
    const steps = /steps = (\d+)/.exec(kit)![1];
    expect(guide).toContain(`(${steps} by default; the scaffold and the repository's table pass 40)`);
    // Which core speaks which plugin API.
    const [major, minor] = CORE_VERSION.split('.');
    expect(guide).toMatch(new RegExp(`\\| ${major}\\.${minor}\\.x +\\| ${ARCHITECTURE_API_VERSION} +\\|`));
    // Local development does not install @tessera/core from the registry.
    expect(guide).not.toMatch(/"devDependencies": \{[^}]*"@tessera\/core"/);
    expect(guide).toContain('"peerDependenciesMeta": { "@tessera/core": { "optional": true } }');
  });
});
