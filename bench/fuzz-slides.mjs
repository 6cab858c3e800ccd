#!/usr/bin/env node
/**
 * The long fuzzing run of hostile slides: mutated copies of the shared slides (see packages/tiler/test/fuzz/), each
 * given to the real `tessera info` or `tessera predict` in a child process with a time limit and a memory bound.
 * Prints the count of each outcome (clean error, success, crash, hang, memory above the bound, outputs left under a
 * final name after a failure), the exit codes, the run rate, and every case that was not a clean error or a
 * success with the command that reproduces it. The corpus is made at run time from ../shared/data/slides.
 *
 *   node bench/fuzz-slides.mjs [--cases 5000] [--seed 1] [--first 0] [--only 17,42] [--concurrency 2]
 *     [--predict-share 0.25] [--timeout-info 30] [--timeout-predict 90] [--rss-gb 3] [--bin apps/cli/dist/bin.js]
 *     [--keep folder] [--json results.json] [--model folder]
 *
 * `--bin` runs another build of the CLI (a copy of the tree before a change, for a before/after count); `--keep`
 * saves the files of crashes, hangs and memory cases there, to become regression cases.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeCorpus } from '../packages/tiler/test/fuzz/corpus.mjs';
import { OUTCOMES, runCampaign } from '../packages/tiler/test/fuzz/campaign.mjs';
import { saveFuzzModel } from '../packages/tiler/test/fuzz/tiny-model.mjs';

const { values } = parseArgs({
  options: {
    cases: { type: 'string', default: '5000' },
    seed: { type: 'string', default: '1' },
    first: { type: 'string', default: '0' },
    only: { type: 'string' },
    concurrency: { type: 'string', default: '2' },
    'predict-share': { type: 'string', default: '0.25' },
    'timeout-info': { type: 'string', default: '30' },
    'timeout-predict': { type: 'string', default: '90' },
    'rss-gb': { type: 'string', default: '3' },
    bin: { type: 'string', default: join(import.meta.dirname, '../apps/cli/dist/bin.js') },
    keep: { type: 'string' },
    json: { type: 'string' },
    model: { type: 'string' },
  },
});

const work = mkdtempSync(join(tmpdir(), 'tessera-fuzz-'));
try {
  const seeds = await makeCorpus();
  // --model: a model folder made elsewhere, e.g. one an older build under test can read.
  const model = values.model ? resolve(values.model) : await saveFuzzModel(join(work, 'model'));
  const seed = Number(values.seed);
  const cases = Number(values.cases);
  const only = values.only?.split(',').map(Number);
  console.log(
    `fuzzing ${resolve(values.bin)}: ${only ? only.length : cases} cases of seed ${seed} over ${seeds.length} seed ` +
      `files, ${values.concurrency} at a time, predict share ${values['predict-share']}`,
  );
  let done = 0;
  const report = await runCampaign({
    seeds,
    bin: resolve(values.bin),
    model,
    work,
    seed,
    cases,
    first: Number(values.first),
    only,
    concurrency: Number(values.concurrency),
    predictShare: Number(values['predict-share']),
    timeoutMs: { info: Number(values['timeout-info']) * 1000, predict: Number(values['timeout-predict']) * 1000 },
    rssLimitBytes: Number(values['rss-gb']) * 1024 ** 3,
    keep: values.keep && resolve(values.keep),
    onResult: (r) => {
      done++;
      if (!['error', 'success'].includes(r.outcome)) {
        console.log(
          `  case ${r.index} ${r.command} ${r.outcome} (exit ${r.code ?? r.signal}, ${r.ms} ms, ${r.peakMb} MB) ` +
            `${r.seed} [${r.ops.join('; ')}]: ${r.message}`,
        );
      }
      if (done % 250 === 0) console.log(`  ... ${done} cases`);
    },
  });
  const { results, counts, seconds, rate } = report;
  const byCommand = (command) => {
    const of = results.filter((r) => r.command === command);
    return (
      `${command} ${of.length}: ` + OUTCOMES.map((o) => `${o} ${of.filter((r) => r.outcome === o).length}`).join(', ')
    );
  };
  const codes = {};
  for (const r of results) codes[r.code ?? r.signal] = (codes[r.code ?? r.signal] ?? 0) + 1;
  const peak = Math.max(...results.map((r) => r.peakMb));
  console.log(`\n${results.length} cases in ${seconds.toFixed(0)} s (${rate.toFixed(2)} cases/s)`);
  console.log(`outcomes: ${OUTCOMES.map((o) => `${o} ${counts[o]}`).join(', ')}`);
  console.log(`  ${byCommand('info')}`);
  console.log(`  ${byCommand('predict')}`);
  console.log(
    `exit codes: ${Object.entries(codes)
      .map(([c, n]) => `${c}: ${n}`)
      .join(', ')}`,
  );
  console.log(`peak RSS of a case: ${peak} MB`);
  if (values.json) writeFileSync(values.json, JSON.stringify({ seed, counts, seconds, rate, results }, null, 2));
} finally {
  rmSync(work, { recursive: true, force: true });
}
