import { Command, CommanderError, Option } from 'commander';
import { TesseraError, TRAIN_DEFAULTS as D } from '@tessera/core';
import { archsCommand } from './commands/archs.js';
import { checkPluginCommand } from './commands/check-plugin.js';
import { createPluginCommand } from './commands/create-plugin.js';
import { demoCommand } from './commands/demo.js';
import { doctorCommand } from './commands/doctor.js';
import { evaluateCommand } from './commands/evaluate.js';
import { exportCommand } from './commands/export.js';
import { infoCommand } from './commands/info.js';
import { predictCommand } from './commands/predict.js';
import { trainCommand } from './commands/train.js';
import { trainersCommand } from './commands/trainers.js';
import { registerView } from './commands/view.js';
import { registerQueueCommands } from './commands/queue.js';
import { registerModelPackages } from './commands/models.js';
import { collect, float, floatList, int } from './parsers.js';
import { colour } from './progress.js';

/** Version of the CLI. */
export const CLI_VERSION = '0.1.0';

/** Builds the `tessera` program. */
export function buildProgram(): Command {
  const program = new Command('tessera')
    .description('Semantic segmentation of microscopy and whole-slide images')
    .version(CLI_VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ outputError: (text, write) => write(colour(text, 'red')) })
    .exitOverride();
  const backend = () =>
    new Option('--backend <engine>', 'compute engine: auto, tfjs-node-gpu, tfjs-node, wasm, cpu (env TESSERA_BACKEND)');
  const output = (cmd: Command) =>
    cmd
      .option('-q, --quiet', 'print nothing but errors (and --json output)')
      .option('--json', 'print a JSON result on stdout');

  output(
    program
      .command('train')
      .description('train a segmentation network on images and per-pixel label masks')
      .option('--arch <name>', 'architecture name, plugin package or plugin file (.js)', 'unet')
      .option('--arch-option <key=value>', 'architecture option, repeatable (see "tessera archs")', collect, [])
      .option('--images <dir>', 'folder of training images (PNG, JPEG, TIFF)')
      .option('--masks <dir>', 'folder of label masks matched to images by file name')
      .requiredOption('--out <dir>', 'output model folder')
      .option('--classes <file>', 'class map JSON: {"classes":[{"name","value","color"}],"ignore":N}')
      .option('--epochs <n>', `maximum epochs (default ${D.epochs})`, int)
      .option(
        '--time-budget <minutes>',
        'stop within one step of this many minutes, with the schedule, validations and network size fitted to it',
        float,
      )
      .option('--tile <px>', `training crop size (default ${D.tileSize})`, int)
      .option('--batch <n>', `batch size (default ${D.batchSize})`, int)
      .option(
        '--steps-per-epoch <n>',
        'optimisation steps per epoch (default: crops covering the training pixels once)',
        int,
      )
      .option('--optimizer <name>', `adam, sgd or rmsprop (default ${D.optimizer})`)
      .option('--lr <rate>', `learning rate (default ${D.lr})`, float)
      .option('--schedule <name>', `learning-rate schedule: constant, step or cosine (default ${D.schedule})`)
      .option('--warmup-steps <n>', 'linear learning-rate warm-up steps', int)
      .option('--loss <name>', `cross-entropy, dice, ce-dice or focal (default ${D.loss})`)
      .option('--class-weights <list>', 'comma-separated loss weight per class', floatList)
      .option('--val-split <f>', `share of images held out for validation (default ${D.valSplit})`, float)
      .option('--val-images <dir>', 'validation images folder')
      .option('--val-masks <dir>', 'validation masks folder')
      .option('--patience <n>', 'stop after this many validations without improvement (0 = off)', int)
      .option('--validate-every <steps>', 'steps between validations (default: every epoch, or 16 over a budget)', int)
      .option('--select <metric>', `keep the weights with the best dice (foreground) or loss (default ${D.select})`)
      .option(
        '--ema <decay>',
        `moving average of the weights that is validated and kept, 0 = off (default ${D.ema})`,
        float,
      )
      .option('--no-augment', 'turn data augmentation off')
      .option('--mpp <um>', 'µm per pixel of the training images (recorded in the model)', float)
      .option('--seed <n>', `random seed (default ${D.seed})`, int)
      .option('--micro-batch <n>', 'crops per forward/backward pass (default: 2 x 256 x 256 pixels worth)', int)
      .option(
        '--workers <n>',
        'threads sharing each step, same weights whatever the number (default: CPU cores on wasm, else 1)',
        int,
      )
      .addOption(backend())
      .option('--config <file>', 'JSON or YAML file of options (flags override it)')
      .option('--resume', 'continue from the newest checkpoint in --out')
      .option(
        '--init <model>',
        'start from a trained model folder (transfer learning): layers of the same name and shapes are loaded, ' +
          'the others (e.g. the head, for other classes) start fresh; its architecture and options unless given',
      )
      .option('--freeze <part>', 'with --init: "encoder" keeps the loaded encoder layers as they are (default none)')
      .option('--freeze-epochs <n>', 'with --freeze: unfreeze after this many epochs (default: the whole run)', int)
      .option('--lr-pretrained <rate>', 'with --init: learning rate of the loaded layers (default: --lr)', float)
      .option('--trainer <name>', 'trainer name, plugin package or file (see "tessera trainers")', 'default'),
  ).action(async (opts, cmd: Command) => trainCommand(opts, cmd));

  output(
    program
      .command('pretrain')
      .description('self-supervised pretraining on unlabelled images and slides: a model folder for "train --init"')
      .option('--arch <name>', 'architecture name, plugin package or plugin file (.js)', 'unet')
      .option('--arch-option <key=value>', 'architecture option, repeatable (see "tessera archs")', collect, [])
      .requiredOption('--images <paths...>', 'folders of images and/or slides, and slide files (tissue is sampled)')
      .requiredOption('--out <dir>', 'output model folder')
      .option('--time-budget <minutes>', 'stop within one step of this many minutes', float)
      .option('--epochs <n>', `maximum epochs (default ${D.epochs})`, int)
      .option('--tile <px>', `tile and crop size (default ${D.tileSize})`, int)
      .option('--mpp <um>', 'read slides at this µm per pixel (default: their full resolution)', float)
      .option('--batch <n>', `batch size (default ${D.batchSize})`, int)
      .option('--steps-per-epoch <n>', 'optimisation steps per epoch (default: crops covering the tiles once)', int)
      .option('--lr <rate>', `learning rate (default ${D.lr})`, float)
      .option('--seed <n>', `random seed (default ${D.seed})`, int)
      .option('--workers <n>', 'threads sharing each step (default: CPU cores on wasm, else 1)', int)
      .addOption(backend())
      .option(
        '--trainer <name>',
        'a trainer that learns from images alone (see "tessera trainers"): inpainting (any images), he-nuclei (H&E nuclei)',
        'inpainting',
      ),
  ).action(async (opts, cmd: Command) =>
    trainCommand({ ...opts, images: opts.images[0], sources: opts.images, pretrain: true }, cmd),
  );

  program
    .command('trainers')
    .description('list the trainers: the default (supervised) one and installed trainer plugins')
    .option('--json', 'print JSON')
    .action(async (opts) => trainersCommand(opts));

  output(
    program
      .command('evaluate')
      .description('score a model on images with masks: pixel accuracy, IoU and Dice per class')
      .requiredOption('--model <dir>', 'model folder written by "tessera train"')
      .requiredOption('--images <dir>', 'folder of images')
      .requiredOption('--masks <dir>', 'folder of label masks')
      .addOption(backend()),
  ).action(async (opts) => evaluateCommand(opts));

  output(
    program
      .command('predict')
      .description('predict label maps (and optionally probabilities and overlays) for images')
      .argument('<input...>', 'image files or folders of images')
      .requiredOption('--model <dir>', 'model folder written by "tessera train"')
      .requiredOption('--out <dir>', 'output folder')
      .option('--probabilities', 'also write one 8-bit probability map per class')
      .option('--overlay', 'also write a colour overlay of the label map on the image')
      .option(
        '--geojson',
        'also write <stem>_polygons.geojson: one polygon per region of each class but the background, in level-0 ' +
          'pixels, for QuPath (File > Import objects)',
      )
      .option(
        '--geojson-min-area <px>',
        'leave regions of fewer label-map pixels out of the GeoJSON (implies --geojson; default 0)',
        float,
      )
      .option(
        '--geojson-object <type>',
        'QuPath object type of the polygons: detection (many small objects, e.g. nuclei) or annotation ' +
          '(implies --geojson; default detection)',
      )
      .option('--tile <px>', 'predict in overlapping windows of this size', int)
      .option('--overlap <px>', 'overlap of the windows', int)
      .option('--workers <n>', 'whole slides: worker threads (default: CPU cores, at most 8)', int)
      .option('--batch <n>', 'whole slides: tiles per network call (default 4)', int)
      .option('--mpp <um>', "whole slides: µm per pixel to predict at (default: the model's)", float)
      .option('--no-tissue', 'whole slides: predict every tile, also background')
      .option(
        '--stripe-width <px>',
        'whole slides: predict wider slides in vertical stripes of at most this width, so memory does not grow ' +
          'with the width (default 16384)',
        int,
      )
      .option('--resume', 'whole slides: continue an interrupted prediction from its partial work in --out')
      .option('--runtime <name>', 'auto (ONNX where the model converts), onnx or tfjs', 'auto')
      .option('--device <name>', 'cpu, or cuda (ONNX runtime with its CUDA provider)', 'cpu')
      .option('--threads <n>', 'ONNX runtime threads (per worker for slides; default: cores / workers)', int)
      .option(
        '--precision <name>',
        'fp32, or int8: the ONNX runtime on <model>/model.int8.onnx (made by "tessera export --quantize int8")',
        'fp32',
      )
      .option(
        '--queue <url>',
        'whole slides: submit them to the workers of this Redis queue and wait (see "tessera worker")',
      )
      .option('--detach', 'with --queue: submit and exit without waiting')
      .option(
        '--region-pixels <n>',
        'with --queue: output pixels per region job (default 16000000, less for a slide of fewer than 16 regions)',
        int,
      )
      .option('--shard <i/N>', 'predict only shard i of N of the sorted inputs (Kubernetes Indexed Jobs, SLURM arrays)')
      .addOption(backend()),
  ).action(async (inputs: string[], opts) => predictCommand(inputs, opts));

  output(
    program
      .command('export')
      .description('export a trained model for other runtimes (ONNX), checked against the tfjs model')
      .argument('<model>', 'model folder written by "tessera train"')
      .option('--format <name>', 'onnx', 'onnx')
      .option('--out <file>', 'output file (default <model>/model.onnx, which predict then uses)')
      .option(
        '--quantize <precision>',
        'int8: also write an int8 quantization (ONNX QDQ) beside it, <model>/model.int8.onnx, for predict ' +
          '--precision int8; checked against fp32 on the calibration tiles',
      )
      .option(
        '--calibration <images...>',
        "with --quantize: images or folders to calibrate on (default: a sample of the model's training images)",
      )
      .option(
        '--calibration-method <name>',
        "with --quantize: percentile (default; the middle 99.99% of each tensor's values) or minmax",
      )
      .option(
        '--min-agreement <share>',
        'with --quantize: refuse the int8 model when its labels agree with fp32 on fewer calibration pixels ' +
          '(default 0.99)',
        float,
      )
      .option('--force', 'with --quantize: write the int8 model even below --min-agreement')
      .addOption(backend()),
  ).action(async (model: string, opts) => exportCommand(model, opts));

  output(
    program
      .command('info')
      .description('print the structure of a slide: levels, tiles, compression, vendor, µm per pixel')
      .argument('<slide>', 'slide or image file (SVS, OME-TIFF, pyramidal TIFF, PNG, JPEG)'),
  ).action(async (slide: string, opts) => infoCommand(slide, opts));

  program
    .command('archs')
    .description('list installed architectures with their options and defaults')
    .option('--json', 'print JSON')
    .option('--arch <file-or-package>', 'also load this plugin')
    .option('--tile <px>', 'tile size for the FLOP count (default 256)', int)
    .action(async (opts) => archsCommand(opts));

  output(
    program
      .command('create-plugin')
      .description('write a new architecture plugin package (tessera-arch-<name>) that passes the conformance kit')
      .argument('<name>', 'architecture name, lower-case kebab (e.g. attention-unet)')
      .option('--dir <path>', 'folder to write the package into (default ./tessera-arch-<name>)')
      .option('--typescript', 'a TypeScript package (src/ compiled to dist/ by tsc) instead of plain JavaScript'),
  ).action(async (name: string, opts) => createPluginCommand(name, opts));

  output(
    program
      .command('check-plugin')
      .description(
        'load an architecture plugin as train, evaluate and predict do, and run the conformance kit over it ' +
          '(output, input multiple, save/load in a fresh worker thread, receptive field, training, ONNX export)',
      )
      .argument('<plugin>', 'plugin file (.js), package name or installed architecture name')
      .option('--arch-option <key=value>', 'architecture option, repeatable (use a CPU-fit configuration)', collect, [])
      .option('--no-training', 'skip the training check (the slowest)')
      .addOption(backend()),
  ).action(async (plugin: string, opts) => checkPluginCommand(plugin, opts));

  program
    .command('doctor')
    .description('list compute engines, whether each is present, and how to install the faster ones')
    .option('--json', 'print JSON')
    .action(async (opts) => doctorCommand(opts));

  output(
    program
      .command('demo')
      .description(
        'make a small synthetic labelled data set, train a U-Net on it for about a minute, and predict; then ' +
          'installed model packages (@tessera/model-he-nuclei) predict their real-tissue samples',
      )
      .option('--out <dir>', 'output folder', 'tessera-demo')
      .option('--time-budget <minutes>', 'training time', float, 1)
      .option('--seed <n>', 'random seed', int, 7)
      .addOption(backend()),
  ).action(async (opts) => demoCommand(opts));
  registerView(program);
  registerQueueCommands(program);
  registerModelPackages(program);
  return program;
}

/** SDK option names whose flag is not their kebab-case form. */
const FLAG_NAMES: Readonly<Record<string, string>> = {
  tileSize: '--tile',
  batchSize: '--batch',
  timeBudgetMinutes: '--time-budget',
  'geojson.objectType': '--geojson-object',
};

/**
 * A message of the SDK in the vocabulary of the command that ran: each option the error names (`options`, by its SDK
 * name) becomes the command's flag for it, when the command has one (`tileSize` → `--tile`, `geojson.minArea` →
 * `--geojson-min-area`).
 */
export function inFlags(text: string, options: readonly string[], command: Command | undefined): string {
  for (const option of options) {
    const flag =
      FLAG_NAMES[option] ?? `--${option.replace(/\./g, '-').replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    if (!command?.options.some((o) => o.long === flag)) continue;
    const name = option.replace(/\./g, '\\.');
    text = text.replace(new RegExp(`(?<![\\w.-])${name}(?![\\w-])`, 'g'), flag);
  }
  return text;
}

/** Runs the CLI with `argv` (as `process.argv`) and returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  let ran: Command | undefined;
  program.hook('preAction', (_program, action) => {
    ran = action;
  });
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? 0 : 2;
    }
    if (error instanceof TesseraError) {
      process.stderr.write(colour(`error: ${inFlags(error.message, error.options, ran)}\n`, 'red'));
      if (error.hint) process.stderr.write(`hint: ${inFlags(error.hint, error.options, ran)}\n`);
      return error.exitCode;
    }
    throw error;
  }
}
