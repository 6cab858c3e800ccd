/**
 * Hostile slides through the real `tessera info` and `tessera predict`, each in a child process with a time limit and
 * a memory bound (see packages/tiler/test/fuzz/): the fixed regression cases, then a short seeded mutation run over
 * the shared slides. `bench/fuzz-slides.mjs` is the long run. TESSERA_FUZZ_CASES sets the short run's size.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN } from './test-helpers.js';
import { makeCorpus } from '../../../packages/tiler/test/fuzz/corpus.mjs';
import { runCampaign } from '../../../packages/tiler/test/fuzz/campaign.mjs';
import { REGRESSIONS } from '../../../packages/tiler/test/fuzz/regressions.mjs';
import { runCli } from '../../../packages/tiler/test/fuzz/run-cli.mjs';
import { saveFuzzModel } from '../../../packages/tiler/test/fuzz/tiny-model.mjs';

type Seed = { name: string; ext: string; bytes: Buffer };
type Regression = {
  name: string;
  build: (seeds: Seed[]) => { ext: string; bytes: Buffer };
  message: RegExp;
  read?: boolean;
};
type CliResult = {
  outcome: string;
  code: number | null;
  stdout: string;
  stderr: string;
  peakBytes: number;
  leftovers: string[];
};

const RSS_BOUND = 2 * 1024 ** 3;
const CASES = Number(process.env.TESSERA_FUZZ_CASES ?? 80);

let root: string;
let seeds: Seed[];
let model: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-fuzz-test-'));
  seeds = await makeCorpus();
  model = await saveFuzzModel(join(root, 'model'));
});
afterAll(async () => rm(root, { recursive: true, force: true }));

function cli(args: string[], outDir?: string): Promise<CliResult> {
  return runCli({
    bin: BIN,
    args,
    timeoutMs: args[0] === 'info' ? 30_000 : 60_000,
    rssLimitBytes: RSS_BOUND,
    outDir,
    env: { TESSERA_BACKEND: 'wasm' },
  });
}

describe('fixed regression cases through the CLI', () => {
  it.each((REGRESSIONS as Regression[]).map((r, i) => [r.name, r, i] as const))(
    '%s: exit 5 from info and predict, the same message, no output',
    async (_name, regression, i) => {
      const dir = join(root, `regression-${i}`);
      await mkdir(dir);
      const { ext, bytes } = regression.build(seeds);
      const file = join(dir, `slide${ext}`);
      await writeFile(file, bytes);
      const out = join(dir, 'out');
      const [info, predict] = await Promise.all([
        cli(['info', file]),
        cli(['predict', file, '--model', model, '--out', out, '--runtime', 'tfjs', '--workers', '1'], out),
      ]);
      if (regression.read) {
        // A damaged attribute that is not needed: the file is read, and predicted.
        expect([info.outcome, predict.outcome], info.stderr + predict.stderr).toEqual(['success', 'success']);
        expect(info.stdout).toMatch(regression.message);
        return;
      }
      for (const run of [info, predict]) {
        expect(run.outcome, run.stderr).toBe('error');
        expect(run.code).toBe(5);
        expect(run.stderr).toMatch(regression.message);
        expect(run.stderr).not.toMatch(/unexpected failure|\n\s+at /);
        expect(run.peakBytes).toBeLessThan(RSS_BOUND);
      }
      // One decision, one answer: predict refuses with the message info gives, and leaves nothing behind.
      expect(predict.stderr.match(/^error: .*/m)?.[0]).toBe(info.stderr.match(/^error: .*/m)?.[0]);
      expect(await readdir(dir)).toEqual([`slide${ext}`]);
    },
  );
});

describe('a short seeded mutation run through the CLI', () => {
  it(
    `${CASES} mutated slides: documented exit codes, no stack trace, no hang, bounded memory, no output after a failure`,
    { timeout: 600_000 },
    async () => {
      const work = join(root, 'campaign');
      const { results, counts } = await runCampaign({
        seeds,
        bin: BIN,
        model,
        work,
        seed: 20_260_101,
        cases: CASES,
        concurrency: 2,
        predictShare: 0.2,
        timeoutMs: { info: 30_000, predict: 60_000 },
        rssLimitBytes: RSS_BOUND,
      });
      const bad = results.filter((r: { outcome: string }) => r.outcome !== 'error' && r.outcome !== 'success');
      expect(bad, JSON.stringify(bad, null, 1)).toEqual([]);
      for (const r of results) if (r.outcome === 'error') expect(r.code, r.message).toBe(5);
      // The run reaches both sides: files refused and files read.
      expect(counts.error).toBeGreaterThan(CASES / 5);
      expect(counts.success).toBeGreaterThan(CASES / 20);
    },
  );
});

describe('output folders and input paths', () => {
  it('refuses --out under /proc at once (exit 10), before any work, for predict and train', async () => {
    const file = join(root, 'small.svs');
    await writeFile(file, seeds.find((s) => s.name.endsWith('small.svs'))!.bytes);
    const predict = await cli(['predict', file, '--model', model, '--out', '/proc/tessera-out']);
    expect(predict.outcome).toBe('error');
    expect(predict.code).toBe(10);
    expect(predict.stderr).toMatch(
      /Cannot use "\/proc\/tessera-out" as the output folder: "\/proc\/tessera-out" cannot be created/,
    );
    const train = await runCli({
      bin: BIN,
      args: ['train', '--images', root, '--masks', root, '--out', '/proc/tessera-run/model', '--epochs', '1'],
      timeoutMs: 60_000,
      rssLimitBytes: RSS_BOUND,
      env: { TESSERA_BACKEND: 'wasm' },
    });
    expect(train.code).toBe(10);
    expect(train.stderr).toMatch(/Cannot use "\/proc\/tessera-run\/model" as the output folder/);
  });

  it('names a symbolic link loop as such, not as a missing file', async () => {
    const { symlink } = await import('node:fs/promises');
    const a = join(root, 'loop-a');
    const b = join(root, 'loop-b');
    await symlink(b, a);
    await symlink(a, b);
    const info = await cli(['info', a]);
    expect(info.code).toBe(4);
    expect(info.stderr).toMatch(/loop-a" cannot be opened: its symbolic links form a loop/);
    const predict = await cli(['predict', a, '--model', model, '--out', join(root, 'loop-out')]);
    expect(predict.code).toBe(4);
    expect(predict.stderr).toMatch(/Input .*loop-a cannot be opened: its symbolic links form a loop/);
  });
});
