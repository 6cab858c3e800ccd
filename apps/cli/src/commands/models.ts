import type { Command } from 'commander';
import type { ModelManifest } from '@tessera/core';
import { listModelPackages, resolveModelReference, type ModelPackageEntry } from '../model-packages.js';
import { loadRegistry } from '../plugins.js';
import { formatDuration } from '../progress.js';

/** Validation scores of a manifest's kept weights (`training.metrics`, an evaluation report), by class name. */
function validationDice(manifest: ModelManifest): Record<string, number> | null {
  const classes = (manifest.training?.metrics as { classes?: { name: string; dice: number }[] } | undefined)?.classes;
  return Array.isArray(classes) ? Object.fromEntries(classes.map((c) => [c.name, c.dice])) : null;
}

/** The JSON record of one package of `tessera models --json`. */
function record(entry: ModelPackageEntry, installed: (architecture: string) => boolean) {
  if (!entry.valid) return entry;
  const { manifest, tessera } = entry;
  const training = manifest.training;
  return {
    valid: true as const,
    name: entry.name,
    version: entry.version,
    description: entry.description,
    license: entry.license,
    folder: entry.dir,
    packageDir: entry.packageDir,
    architecture: {
      name: manifest.architecture.name,
      version: manifest.architecture.version,
      options: manifest.architecture.options,
      parameters: manifest.architecture.parameters,
      installed: installed(manifest.architecture.name),
    },
    classes: manifest.classes.map((c) => ({ name: c.name, value: c.value })),
    mpp: manifest.mpp,
    tileSize: manifest.tileSize,
    inputChannels: manifest.inputChannels,
    onnx: entry.onnx,
    training: training
      ? {
          data: tessera.data ?? null,
          trainImages: training.data.trainStems.length,
          validationImages: training.data.validationStems.length,
          durationSeconds: training.durationSeconds,
          steps: training.steps,
          stopReason: training.stopReason,
          validationDice: validationDice(manifest),
        }
      : null,
    evaluation: tessera.evaluation ?? null,
    sample: entry.sample,
  };
}

function formatScores(scores: Record<string, number>): string {
  return Object.entries(scores)
    .map(([name, value]) => `${name} ${typeof value === 'number' ? value.toFixed(4) : String(value)}`)
    .join(', ');
}

/**
 * `tessera models`: the installed model packages (`@tessera/model-*`, `tessera-model-*`) visible from the working
 * directory and from the CLI: name, version, licence, the model's architecture, classes, µm/px, tile size, input
 * channels, training data and held-out scores where the package records them, and its folder; packages that are not
 * valid model packages with the reason.
 */
export async function modelsCommand(opts: { json?: boolean }): Promise<void> {
  const entries = await listModelPackages();
  const { registry } = await loadRegistry();
  const rows = entries.map((entry) => record(entry, (name) => registry.has(name)));
  if (opts.json) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  if (rows.length === 0) {
    process.stdout.write(
      'No model package is installed here (packages named @tessera/model-* or tessera-model-*).\n' +
        'Install one with npm install <package>; docs/model-packages.md says how to make one.\n',
    );
    return;
  }
  const write = (line: string) => process.stdout.write(line + '\n');
  for (const r of rows) {
    if (!r.valid) {
      write(`${r.name} ${r.version ?? '?'}  NOT USABLE: ${r.reason}`);
      continue;
    }
    write(`${r.name} ${r.version}  licence ${r.license ?? 'not stated'}${r.description ? `  ${r.description}` : ''}`);
    const a = r.architecture;
    write(
      `  architecture ${a.name} ${a.version} ${JSON.stringify(a.options)}, ${a.parameters.toLocaleString('en-US')} ` +
        `parameters${a.installed ? '' : ` (NOT INSTALLED here: install the plugin of "${a.name}" to use the model)`}`,
    );
    write(
      `  classes ${r.classes.map((c) => `${c.name}=${c.value}`).join(', ')}; ${r.inputChannels} input channel(s); ` +
        `${r.mpp === null ? 'µm/px not recorded' : `${r.mpp} µm/px`}; tile ${r.tileSize} px; ` +
        (r.onnx ? 'with model.onnx' : 'no model.onnx'),
    );
    if (r.training) {
      const t = r.training;
      write(
        `  trained on ${t.data ?? 'data not described'}: ${t.trainImages} training and ${t.validationImages} ` +
          `validation image(s), ${t.steps} steps in ${formatDuration(t.durationSeconds)}` +
          (t.validationDice ? `; validation Dice ${formatScores(t.validationDice)}` : ''),
      );
    }
    if (r.evaluation) write(`  held out: ${formatScores(r.evaluation.scores)} on ${r.evaluation.data}`);
    if (r.sample) write(`  sample ${r.sample} (tessera demo predicts it)`);
    write(`  folder ${r.folder}`);
  }
}

/**
 * Adds `tessera models`, and lets every command that takes a model folder take a model package name instead: before
 * a command runs, its `--model` option and its `<model>` argument (`tessera export`) are replaced by the folder that
 * {@link resolveModelReference} resolves them to. A folder that exists is left as given.
 */
export function registerModelPackages(program: Command): void {
  program
    .command('models')
    .description(
      'list installed model packages (@tessera/model-*, tessera-model-*): architecture, classes, µm/px, tile, ' +
        'training data, held-out scores, licence, folder; use one by name wherever a model folder is asked for',
    )
    .option('--json', 'print JSON')
    .action(async (opts) => modelsCommand(opts));
  program.hook('preAction', async (_program, action) => resolveModelArguments(action));
}

/** Replaces the `--model` option and the `<model>` argument of `command` by the model folders they name. */
export async function resolveModelArguments(command: Command): Promise<void> {
  const model: unknown = command.getOptionValue('model');
  if (typeof model === 'string') {
    const { dir } = await resolveModelReference(model);
    if (dir !== model) command.setOptionValueWithSource('model', dir, command.getOptionValueSource('model'));
  }
  for (const [index, argument] of command.registeredArguments.entries()) {
    const value: unknown = command.processedArgs[index];
    if (argument.name() === 'model' && typeof value === 'string') {
      command.processedArgs[index] = (await resolveModelReference(value)).dir;
    }
  }
}
