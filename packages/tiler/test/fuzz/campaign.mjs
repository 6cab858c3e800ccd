/**
 * A fuzzing campaign: `cases` mutated slides, each checked with `tessera info` or `tessera predict` (the real CLI in
 * a child process, see {@link runCli}), `concurrency` at a time. Case `i` of seed `s` is always the same file and the
 * same command, so any case can be run again alone (`bench/fuzz-slides.mjs --seed s --only i`).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GENERATORS, mutate, randomGenerator } from './mutate.mjs';
import { runCli } from './run-cli.mjs';

/** Outcomes, in the order they are reported. */
export const OUTCOMES = ['error', 'success', 'crash', 'hang', 'memory', 'leftover'];

/** Seeds `predict` runs on: the small ones (CMU-1-Small-Region, 6.6 Mpx, is read by `info` only, for time). */
const PREDICT_MAX_SEED_BYTES = 1_000_000;

/**
 * The file and command of case `index`: `{ index, command, seed, ext, bytes, ops }`.
 * @param seeds from `makeCorpus`.
 */
export function makeCase(seeds, seed, index, predictShare) {
  const rng = randomGenerator((seed * 1_000_003 + index * 7919) >>> 0);
  const command = rng.chance(predictShare) ? 'predict' : 'info';
  if (rng.chance(0.05)) {
    const name = rng.pick(Object.keys(GENERATORS));
    const made = GENERATORS[name](rng, seeds);
    return { index, command, seed: `generated/${name}`, ...made };
  }
  const pool = command === 'predict' ? seeds.filter((s) => s.bytes.length <= PREDICT_MAX_SEED_BYTES) : seeds;
  const source = rng.pick(pool);
  const { bytes, ops } = mutate(source.bytes, rng);
  return { index, command, seed: source.name, ext: source.ext, bytes, ops };
}

/**
 * Runs a campaign and returns `{ results, counts, seconds, rate }` (cases per second).
 * @param {{ seeds: object[], bin: string, model: string, work: string, seed?: number, cases: number, first?: number,
 *   only?: number[], concurrency?: number, predictShare?: number, timeoutMs?: { info: number, predict: number },
 *   rssLimitBytes?: number, keep?: string, onResult?: (r: object) => void }} options
 */
export async function runCampaign(options) {
  const {
    seeds,
    bin,
    model,
    work,
    seed = 1,
    cases,
    first = 0,
    only,
    concurrency = 2,
    predictShare = 0.25,
    timeoutMs = { info: 30_000, predict: 90_000 },
    rssLimitBytes = 3 * 1024 ** 3,
    keep,
    onResult,
  } = options;
  const indices = only ?? Array.from({ length: cases }, (_, i) => first + i);
  const counts = Object.fromEntries(OUTCOMES.map((o) => [o, 0]));
  const results = [];
  const start = performance.now();
  let next = 0;
  const runOne = async (index) => {
    const c = makeCase(seeds, seed, index, predictShare);
    const dir = join(work, `case-${index}`);
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `slide${c.ext}`);
    writeFileSync(file, c.bytes);
    const out = join(dir, 'out');
    const args =
      c.command === 'info'
        ? ['info', file]
        : ['predict', file, '--model', model, '--out', out, '--runtime', 'tfjs', '--workers', '1', '--quiet'];
    const r = await runCli({
      bin,
      args,
      timeoutMs: timeoutMs[c.command],
      rssLimitBytes,
      outDir: c.command === 'predict' ? out : undefined,
      env: { TESSERA_BACKEND: 'wasm' },
    });
    const result = {
      index,
      command: c.command,
      seed: c.seed,
      ops: c.ops,
      bytes: c.bytes.length,
      outcome: r.outcome,
      code: r.code,
      signal: r.signal,
      ms: Math.round(r.ms),
      peakMb: Math.round(r.peakBytes / 1e6),
      message: firstLines(r.stderr),
      leftovers: r.leftovers,
    };
    if (keep && !['error', 'success'].includes(r.outcome)) {
      mkdirSync(keep, { recursive: true });
      writeFileSync(join(keep, `seed${seed}-case${index}-${r.outcome}${c.ext}`), c.bytes);
    }
    rmSync(dir, { recursive: true, force: true });
    counts[r.outcome]++;
    results.push(result);
    onResult?.(result);
  };
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < indices.length) await runOne(indices[next++]);
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  results.sort((a, b) => a.index - b.index);
  return { results, counts, seconds, rate: results.length / seconds };
}

/** The first lines of stderr that say something (a stack trace is cut after its first frame). */
function firstLines(stderr) {
  return stderr
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('warning:'))
    .slice(0, 3)
    .join(' | ')
    .slice(0, 400);
}
