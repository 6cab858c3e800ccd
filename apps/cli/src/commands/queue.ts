/**
 * Distributed prediction in the CLI: `tessera worker` (run region and slide jobs of a queue), `tessera queue
 * status|retry|clean`, and the `--queue` path of `tessera predict` (submit, then wait with one progress display over
 * every worker, or `--detach`). `@tessera/queue` is an optional peer dependency, imported on first use.
 */
import { availableParallelism } from 'node:os';
import { Command, InvalidArgumentError } from 'commander';
import { InvalidInputError, readManifest, TesseraError, type ModelManifest } from '@tessera/core';
import { importOptional } from '../optional.js';
import { loadRegistry } from '../plugins.js';
import { info, warn, type OutputOptions } from '../progress.js';
import { slideRuntime } from '../runtime.js';
import { writeSlideReport } from '../slide-report.js';
import { geojsonOption, type SlidePredictCliOptions } from './predict-slide.js';

/** The module `@tessera/queue`. */
export type QueueModule = typeof import('@tessera/queue');

const importQueue: () => Promise<QueueModule | null> = importOptional('@tessera/queue', () => import('@tessera/queue'));

/** `@tessera/queue`, or an error naming `what` and the package to install. */
export async function requireQueue(what: string): Promise<QueueModule> {
  const queue = await importQueue();
  if (!queue) {
    throw new InvalidInputError(
      `${what} needs the distributed queue @tessera/queue, which is not installed here.`,
      'Install it beside the CLI and the tiler: npm install @tessera/queue @tessera/tiler',
    );
  }
  return queue;
}

/** Options of `tessera predict` that `--queue` uses. */
export interface QueuePredictOptions extends SlidePredictCliOptions, OutputOptions {
  queue: string;
  detach?: boolean;
  /** Output pixels per region job. */
  regionPixels?: number;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : `${Math.floor(s / 60)}m${s % 60}s`;
}

/**
 * Submits whole slides to a queue and (unless `detach`) waits for them, printing regions done, Mpx/s, ETA and the
 * workers alive. Returns one JSON record per slide; a failed slide is reported and the others still complete.
 */
export async function predictWithQueue(slides: string[], opts: QueuePredictOptions): Promise<unknown[]> {
  const queue = await requireQueue(`predict --queue ${opts.queue}`);
  const target = queue.parseQueueUrl(opts.queue);
  // The runtime every worker must use, decided here once (its arithmetic decides the output bits).
  const runtime = await slideRuntime(opts, { quiet: true });
  const kind = runtime.onnx ? ('onnx' as const) : ('tfjs' as const);
  // int8: the calibrated file decides the bits, so the run names it by checksum and every worker checks its copy.
  const int8 =
    opts.precision === 'int8' && runtime.onnx
      ? { precision: 'int8' as const, int8Sha256: await queue.fileSha256(runtime.onnx.file) }
      : {};
  await runtime.cleanup();
  const submitted = await queue.submitSlides(target, slides, {
    model: opts.model,
    out: opts.out,
    regionPixels: opts.regionPixels,
    settings: {
      tile: opts.tile,
      overlap: opts.overlap,
      batchSize: opts.batch,
      mpp: opts.mpp,
      tissue: opts.tissue,
      stripeWidth: opts.stripeWidth,
      probabilities: !!opts.probabilities,
      geojson: geojsonOption(opts),
      runtime: kind,
      backend: kind === 'tfjs' ? opts.backend : undefined,
      ...int8,
    },
  });
  for (const s of submitted) {
    const what = { new: 'submitted', queued: 'already queued', completed: 'already done', failed: 'failed before' };
    info(opts, `${s.slide}: ${what[s.status]} as ${s.jobId} (${s.regions} regions) on ${target.display}`);
  }
  if (opts.detach) {
    info(opts, `detached: follow with "tessera queue status --queue ${target.display}"`);
    return submitted.map((s) => ({ input: s.slide, job: s.jobId, status: s.status, regions: s.regions }));
  }
  let last = 0;
  const outcomes = await queue.waitForSlides(target, submitted, {
    onProgress: (p) => {
      const now = performance.now();
      if (opts.quiet || now - last < 2000) return;
      last = now;
      const mpxs = p.pixelsDone / 1e6 / Math.max(p.elapsedMs / 1000, 1e-9);
      const eta = mpxs > 0 ? (p.pixelsTotal - p.pixelsDone) / 1e6 / mpxs : Infinity;
      const workers = p.workers.length ? p.workers.join(', ') : 'none yet (start "tessera worker")';
      process.stderr.write(
        `regions ${p.regionsDone}/${p.regionsTotal}, slides ${p.slidesDone}/${p.slidesTotal}` +
          `${p.slidesFailed ? ` (${p.slidesFailed} failed)` : ''}, ${mpxs.toFixed(2)} Mpx/s, ETA ${formatEta(eta)}, ` +
          `workers: ${workers}\n`,
      );
    },
  });
  let failed = 0;
  for (const outcome of outcomes) {
    if (outcome.error) {
      failed++;
      warn(opts, outcome.error.message);
    } else info(opts, `${outcome.slide}: done`);
  }
  if (failed > 0) {
    process.exitCode = 5;
    warn(opts, `${failed} of ${outcomes.length} slide(s) failed; retry with "tessera queue retry --queue <url>"`);
  }
  return outcomes.map((o) => (o.error ? { input: o.slide, error: o.error.message } : (o.result ?? { input: o.slide })));
}

/** Options of `tessera worker`. */
export interface WorkerCliOptions extends OutputOptions {
  queue: string;
  allowRoot: string[];
  workers?: number;
  threads?: number;
  concurrency?: number;
  device?: string;
  lockDuration?: number;
  stalledInterval?: number;
}

/** `tessera worker`: runs jobs until SIGTERM/SIGINT (finishing the active ones; twice: abandons them). */
export async function workerCommand(opts: WorkerCliOptions): Promise<void> {
  const queue = await requireQueue('tessera worker');
  const target = queue.parseQueueUrl(opts.queue);
  const { registry, modules } = await loadRegistry();
  const concurrency = opts.concurrency ?? 1;
  const workers = opts.workers ?? Math.max(1, Math.floor(availableParallelism() / concurrency));
  const log = (line: string) => info(opts, `${new Date().toISOString()} ${line}`);
  const manifests = new Map<string, ModelManifest>();
  const worker = await queue.startWorker({
    target,
    allowRoots: opts.allowRoot,
    concurrency,
    workers,
    lockDuration: opts.lockDuration,
    stalledInterval: opts.stalledInterval,
    log,
    prepare: async (data) => {
      // Only architectures installed here, by name: a job never names a module to load.
      if (!registry.list().some((p) => p.name === data.architecture)) {
        throw new queue.JobRefusedError(
          `This worker has no architecture "${data.architecture}" installed (installed: ` +
            `${registry
              .list()
              .map((p) => p.name)
              .join(', ')}), needed by ${data.model}.`,
          `Install the plugin of "${data.architecture}" on this machine, beside the CLI.`,
        );
      }
      const { runtime, backend, precision, int8Sha256 } = data.settings;
      const chosen = await slideRuntime(
        { model: data.model, runtime, threads: opts.threads, device: opts.device, backend, precision },
        { quiet: true },
      ).catch((error: unknown) => {
        if (precision === 'int8' && error instanceof TesseraError) {
          throw new queue.JobRefusedError(
            `This worker cannot run the int8 model of ${data.model}: ${error.message}`,
            'Copy the model folder with its model.int8.onnx to this machine, then retry the slide.',
          );
        }
        throw error;
      });
      if (runtime === 'onnx' && !chosen.onnx) {
        throw new queue.JobRefusedError(
          `This worker cannot run ${data.model} on the ONNX runtime the job asks for (${chosen.label}).`,
          'Install @tessera/onnx beside the CLI on this machine.',
        );
      }
      if (precision === 'int8' && chosen.onnx) {
        const sha = await queue.fileSha256(chosen.onnx.file);
        if (sha !== int8Sha256) {
          await chosen.cleanup();
          throw new queue.JobRefusedError(
            `This worker's ${chosen.onnx.file} has SHA-256 ${sha.slice(0, 12)}… but the job was submitted for the ` +
              `int8 model ${String(int8Sha256).slice(0, 12)}… (another quantization or calibration).`,
            'Copy the model folder, model.int8.onnx included, from the machine that submitted the slide.',
          );
        }
      }
      manifests.set(data.model, await readManifest(data.model));
      return {
        backend: runtime === 'tfjs' ? backend : undefined,
        plugins: modules,
        onnx: chosen.onnx,
        label: chosen.label,
        cleanup: chosen.cleanup,
      };
    },
    finalize: async (data, run, outputs) => {
      const manifest = manifests.get(data.model) ?? (await readManifest(data.model));
      const report = await writeSlideReport(run, outputs, data.model, manifest);
      return {
        input: data.slide,
        report,
        labels: outputs.labels,
        overlay: outputs.overlay,
        areas: outputs.areasJson,
        probabilities: outputs.probabilities.length ? outputs.probabilities : undefined,
        classPixels: Object.fromEntries(outputs.areas.map((a) => [a.name, a.pixels])),
        wholeSlide: { width: run.width, height: run.height, level: run.level, mpp: run.mpp, tiles: run.tilesPredicted },
      };
    },
  });
  info(
    opts,
    `worker ${worker.name} on ${target.display}: ${concurrency} region job(s) at a time, ${workers} tiler thread(s) ` +
      `each; allowed roots ${opts.allowRoot.join(', ')}`,
  );
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        log(`${signal} again: abandoning the active jobs to other workers`);
        void worker.close(true).then(resolve);
        return;
      }
      stopping = true;
      log(`${signal}: finishing the active jobs, then stopping (send again to abandon them)`);
      void worker.close(false).then(resolve);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  log('stopped');
}

function int(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0)
    throw new InvalidArgumentError(`expected a positive integer but received "${value}"`);
  return n;
}
function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Registers `tessera worker` and `tessera queue status|retry|clean`. */
export function registerQueueCommands(program: Command): void {
  program
    .command('worker')
    .description("run distributed prediction jobs from a queue (region jobs on the tiler, then each slide's outputs)")
    .requiredOption(
      '--queue <url>',
      'Redis URL: redis://host:6379, rediss://user:password@host:6380, unix:///path.sock',
    )
    .option(
      '--allow-root <dir>',
      'folder under which slides, models and outputs may lie (repeatable, required)',
      collect,
      [],
    )
    .option('--workers <n>', 'tiler worker threads per region job (default: CPU cores / concurrency)', int)
    .option('--threads <n>', 'ONNX threads per tiler worker (default: cores / workers)', int)
    .option('--concurrency <n>', 'region jobs at once (default 1)', int)
    .option('--device <name>', 'cpu, or cuda (ONNX runtime with its CUDA provider)', 'cpu')
    .option('--lock-duration <ms>', 'job lock, renewed while a job runs; a dead worker loses it after this long', int)
    .option('--stalled-interval <ms>', 'how often jobs of dead workers are looked for', int)
    .option('-q, --quiet', 'print nothing but errors')
    .action(async (opts) => workerCommand(opts));

  const queueCommand = program.command('queue').description('inspect and manage a distributed prediction queue');
  queueCommand
    .command('status')
    .description('job counts, workers, running and failed slides')
    .requiredOption('--queue <url>', 'Redis URL')
    .option('--json', 'print JSON')
    .action(async (opts: { queue: string; json?: boolean }) => {
      const queue = await requireQueue('tessera queue status');
      const status = await queue.queueStatus(queue.parseQueueUrl(opts.queue));
      if (opts.json) {
        process.stdout.write(JSON.stringify(status, null, 2) + '\n');
        return;
      }
      const counts = (c: Record<string, number>) =>
        Object.entries(c)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ');
      const lines = [
        `queue ${status.url}`,
        `  slides:  ${counts(status.slides)}`,
        `  regions: ${counts(status.regions)}`,
        `  workers: ${status.workers.length ? status.workers.join(', ') : 'none'}`,
        ...status.running.map((r) => `  running ${r.slide}: ${r.regionsDone}/${r.regions} regions (${r.state})`),
        ...status.failed.map((f) => `  failed  ${f.slide}: ${f.reason}`),
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
  queueCommand
    .command('retry')
    .description('re-run failed region and slide jobs (finished regions are kept)')
    .requiredOption('--queue <url>', 'Redis URL')
    .action(async (opts: { queue: string }) => {
      const queue = await requireQueue('tessera queue retry');
      const { regions, slides } = await queue.retryFailed(queue.parseQueueUrl(opts.queue));
      process.stdout.write(`re-queued ${regions} failed region job(s) and ${slides} failed slide job(s)\n`);
    });
  queueCommand
    .command('clean')
    .description('remove finished jobs from the queue (their outputs stay)')
    .requiredOption('--queue <url>', 'Redis URL')
    .option('--failed', 'also remove failed jobs')
    .option('--older-than <minutes>', 'only jobs finished this long ago (default 0)', Number)
    .action(async (opts: { queue: string; failed?: boolean; olderThan?: number }) => {
      const queue = await requireQueue('tessera queue clean');
      const removed = await queue.cleanFinished(queue.parseQueueUrl(opts.queue), {
        failed: opts.failed,
        graceMs: (opts.olderThan ?? 0) * 60_000,
      });
      process.stdout.write(`removed ${removed} finished job(s)\n`);
    });
}
