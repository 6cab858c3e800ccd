import { dirname, isAbsolute, resolve } from 'node:path';
import { defaultTrainer, TesseraError, unknownName, validateTrainerPlugin, type TrainerPlugin } from '@tessera/core';
import { findPluginPackages, importPlugin, isPluginReference, type PluginKind } from './plugins.js';
import { warn } from './progress.js';

/** Package-name patterns of trainer plugins the CLI discovers. */
export const TRAINER_PATTERNS = [/^@tessera\/trainer-[a-z0-9-]+$/, /^tessera-trainer-[a-z0-9-]+$/];

const TRAINERS: PluginKind<TrainerPlugin> = {
  noun: 'Trainer',
  flag: '--trainer',
  patterns: TRAINER_PATTERNS,
  validate: validateTrainerPlugin,
};

/** A trainer and where it came from. */
export interface LoadedTrainer {
  plugin: TrainerPlugin;
  /** `core` for the default trainer, else `package <name>` or `file <path>`. */
  source: string;
}

/** The trainers the CLI can run, and the installed packages left out with why. */
export interface LoadedTrainers {
  trainers: Map<string, LoadedTrainer>;
  skipped: { package: string; error: TesseraError }[];
  /** The name of the trainer given by path or package name, if any. */
  extraName?: string;
}

/**
 * Core's default trainer, every installed trainer package (`@tessera/trainer-*`, `tessera-trainer-*`) and one given
 * by path or package name (`extra`, the value of `--trainer`). An installed package that cannot be used (another
 * trainer API, a failing import, a name taken) is left out with a warning; asking for it gives its error.
 */
export async function loadTrainers(extra?: string): Promise<LoadedTrainers> {
  const trainers = new Map<string, LoadedTrainer>();
  const core = defaultTrainer();
  trainers.set(core.name, { plugin: core, source: 'core' });
  const skipped: LoadedTrainers['skipped'] = [];
  const packages = findPluginPackages(process.cwd(), TRAINER_PATTERNS);
  for (const name of [...packages.keys()].sort()) {
    if (name === extra) continue;
    const source = `package ${name}`;
    try {
      const { plugin } = await importPlugin(name, dirname(packages.get(name)!), source, TRAINERS);
      if (trainers.has(plugin.name)) {
        throw new TesseraError(
          `A trainer named "${plugin.name}" is installed twice: from ${trainers.get(plugin.name)!.source} and from ${source}.`,
          'Uninstall one of the two packages, or give --trainer the path or package of the one you mean.',
        );
      }
      trainers.set(plugin.name, { plugin, source });
    } catch (error) {
      if (!(error instanceof TesseraError)) throw error;
      skipped.push({ package: name, error });
      warn({}, `skipped the installed trainer ${name}: ${error.message}`);
    }
  }
  let extraName: string | undefined;
  if (extra && isPluginReference(extra, TRAINER_PATTERNS)) {
    const source = extra.startsWith('.') || isAbsolute(extra) ? `file ${resolve(extra)}` : `package ${extra}`;
    const { plugin } = await importPlugin(extra, process.cwd(), source, TRAINERS);
    if (trainers.has(plugin.name)) {
      warn(
        {},
        `trainer "${plugin.name}" from ${source} is used instead of the one from ${trainers.get(plugin.name)!.source}`,
      );
    }
    trainers.set(plugin.name, { plugin, source });
    extraName = plugin.name;
  }
  return { trainers, skipped, extraName };
}

/**
 * The trainer `--trainer` names: a registered name, or a plugin path or package name.
 * @throws the error of an installed package that was skipped under that name; UnknownNameError listing the trainers.
 */
export async function getTrainer(name: string): Promise<LoadedTrainer> {
  const { trainers, skipped, extraName } = await loadTrainers(name);
  const found = trainers.get(extraName ?? name);
  if (found) return found;
  const failed = skipped.find((s) => s.package === name);
  if (failed) throw failed.error;
  throw unknownName(
    'trainer',
    name,
    [...trainers.keys()],
    'Install a trainer plugin (npm install @tessera/trainer-ssl brings "inpainting", @tessera/trainer-he-nuclei ' +
      '"he-nuclei"), or give its file or package name.',
  );
}
