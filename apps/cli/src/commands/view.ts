import { spawn } from 'node:child_process';
import { Command, InvalidArgumentError } from 'commander';
import { InvalidInputError, type Predictor } from '@tessera/core';
import { importOptional } from '../optional.js';
import { info, warn, type OutputOptions } from '../progress.js';
import { openPredictor } from '../runtime.js';
import { startEngine } from './shared.js';

/** The module `@tessera/viewer`. */
export type ViewerModule = typeof import('@tessera/viewer');

/**
 * `@tessera/viewer`, imported on first use, or `null` when it is not installed: the viewer is an optional peer
 * dependency of the CLI, needed only by `tessera view`.
 */
export const importViewer: () => Promise<ViewerModule | null> = importOptional(
  '@tessera/viewer',
  () => import('@tessera/viewer'),
);

/**
 * `@tessera/viewer`, for `what` (e.g. "tessera view CMU-1.svs").
 * @throws InvalidInputError naming the command and the package to install when the viewer is not installed.
 */
export async function requireViewer(what: string): Promise<ViewerModule> {
  const viewer = await importViewer();
  if (!viewer) {
    throw new InvalidInputError(
      `${what} needs the slide viewer @tessera/viewer, which is not installed here.`,
      'Install it beside the CLI (with the tiler, which reads the slides): npm install @tessera/viewer @tessera/tiler',
    );
  }
  return viewer;
}

/** Options of `tessera view`. */
export interface ViewCliOptions extends OutputOptions {
  predictions?: string;
  model?: string;
  host?: string;
  port?: number;
  open?: boolean;
  cacheMb?: number;
  runtime?: string;
  device?: string;
  threads?: number;
  backend?: string;
}

/** The command that opens `url` in the desktop's browser, or `null` where none is known. */
export function browserCommand(url: string, platform = process.platform): [string, string[]] | null {
  if (platform === 'darwin') return ['open', [url]];
  if (platform === 'win32') return ['cmd', ['/c', 'start', '""', url]];
  if (platform === 'linux' || platform === 'freebsd' || platform === 'openbsd') return ['xdg-open', [url]];
  return null;
}

function int(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer but received "${value}"`);
  return n;
}

/** Adds `tessera view` to the program. */
export function registerView(program: Command): void {
  program
    .command('view')
    .description('look at a slide (or image) and its predictions in the browser: a local viewer with deep zoom')
    .argument('<slide>', 'slide or image file (SVS, OME-TIFF, pyramidal TIFF, DICOM folder, PNG, JPEG)')
    .option('--predictions <dir>', 'the --out folder of "tessera predict": label map, probabilities, outlines, areas')
    .option('--model <dir>', 'model folder: predict the part in view on demand (and take class colours from it)')
    .option('--host <address>', 'listen on this address (e.g. 0.0.0.0) with a random access token (default 127.0.0.1)')
    .option('--port <n>', 'port (default 0: any free port)', int)
    .option('--open', "open the viewer in the desktop's browser")
    .option('--cache-mb <n>', 'megabytes of tiles kept in memory (default 256)', int)
    .option('--runtime <name>', 'with --model: auto (ONNX where the model converts), onnx or tfjs', 'auto')
    .option('--device <name>', 'with --model: cpu, or cuda (ONNX runtime with its CUDA provider)', 'cpu')
    .option('--threads <n>', 'with --model: ONNX runtime threads (default: CPU cores)', int)
    .option('--backend <engine>', 'with --model: compute engine: auto, tfjs-node-gpu, tfjs-node, wasm, cpu')
    .option('-q, --quiet', 'print nothing but the URL and errors')
    .option('--json', 'print {"url","port","token","slides"} as one JSON line on stdout')
    .action(async (slide: string, opts: ViewCliOptions) => viewCommand(slide, opts));
}

/**
 * `tessera view <slide>`: serves the viewer until Ctrl-C (SIGINT) or SIGTERM, and prints its URL on stdout.
 * @throws the viewer's errors: a missing slide, predictions folder or label map (exit code 4), a port in use (2).
 */
export async function viewCommand(slide: string, opts: ViewCliOptions): Promise<void> {
  const { startViewer } = await requireViewer(`tessera view ${slide}`);
  let predictor: Predictor | undefined;
  let model: Parameters<typeof startViewer>[0]['model'];
  if (opts.model) {
    await startEngine(opts.backend, opts);
    model = await openPredictor(
      { model: opts.model, runtime: opts.runtime, device: opts.device, threads: opts.threads, backend: opts.backend },
      opts,
    );
    predictor = model.predictor;
  }
  const server = await startViewer({
    slide,
    predictions: opts.predictions,
    model,
    host: opts.host,
    port: opts.port,
    cacheBytes: opts.cacheMb === undefined ? undefined : opts.cacheMb * 1024 * 1024,
    log: (line) => warn(opts, line),
  }).catch(async (error: unknown) => {
    await predictor?.dispose();
    throw error;
  });
  for (const w of server.warnings) warn(opts, w);
  if (opts.json) {
    process.stdout.write(
      JSON.stringify({ url: server.url, port: server.port, token: server.token, slides: server.slides }) + '\n',
    );
  } else {
    process.stdout.write(`${server.url}\n`);
  }
  info(
    opts,
    `tessera view: ${server.slides.length} slide(s) at ${server.url}` +
      (server.token ? ' (the token in the URL is needed: share it only with who may see the slides)' : '') +
      '; Ctrl-C stops it',
  );
  if (opts.open) {
    const command = browserCommand(server.url);
    if (command) {
      const child = spawn(command[0], command[1], { stdio: 'ignore', detached: true });
      child.on('error', () => warn(opts, `could not start ${command[0]}: open ${server.url} in a browser`));
      child.unref();
    }
  }
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await server.close();
  await predictor?.dispose();
}
