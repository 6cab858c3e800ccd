import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  ArchitectureRegistry,
  PluginError,
  TesseraError,
  validatePlugin,
  type ArchitecturePlugin,
  type ModelManifest,
} from '@tessera/core';
import { warn } from './progress.js';

/** Package-name patterns of architecture plugins the CLI discovers. */
export const PLUGIN_PATTERNS = [/^@tessera\/arch-[a-z0-9-]+$/, /^tessera-arch-[a-z0-9-]+$/];

/** A kind of plugin the CLI loads: its noun in messages, the flag that names one, and its contract check. */
export interface PluginKind<P> {
  noun: 'Architecture' | 'Trainer';
  flag: string;
  patterns: RegExp[];
  validate: (plugin: unknown, source: string) => P;
}

const ARCHITECTURES: PluginKind<ArchitecturePlugin<object>> = {
  noun: 'Architecture',
  flag: '--arch',
  patterns: PLUGIN_PATTERNS,
  validate: validatePlugin,
};

/** The node_modules folders of `start` and of every folder above it, nearest first. */
export function nodeModulesChain(start: string): string[] {
  const dirs: string[] = [];
  let dir = resolve(start);
  for (;;) {
    const nm = join(dir, 'node_modules');
    if (existsSync(nm)) dirs.push(nm);
    const parent = dirname(dir);
    if (parent === dir) return dirs;
    dir = parent;
  }
}

/**
 * Names of installed packages matching `patterns` (architecture plugins by default) visible from `cwd` and from the
 * CLI's own location, each with the node_modules folder it was found in.
 */
export function findPluginPackages(cwd = process.cwd(), patterns = PLUGIN_PATTERNS): Map<string, string> {
  const found = new Map<string, string>();
  const here = dirname(fileURLToPath(import.meta.url));
  for (const nm of [...nodeModulesChain(cwd), ...nodeModulesChain(here)]) {
    const names: string[] = [];
    for (const entry of safeReaddir(nm)) {
      if (entry === '@tessera') for (const sub of safeReaddir(join(nm, '@tessera'))) names.push(`@tessera/${sub}`);
      else names.push(entry);
    }
    for (const name of names) {
      if (patterns.some((re) => re.test(name)) && !found.has(name)) found.set(name, nm);
    }
  }
  return found;
}

/** The entries of a folder, or none when it cannot be read. */
export function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function realpathOr(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** The folder of the package holding `file` (the nearest folder above it with a package.json), or its folder. */
function packageDirOf(file: string): string {
  let dir = dirname(file);
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return dirname(file);
    dir = parent;
  }
}

/** The `@tessera/core` entry file that the CLI itself runs with (realpath). */
function cliCoreEntry(): string {
  return realpathOr(createRequire(import.meta.url).resolve('@tessera/core'));
}

/** `node_modules/@tessera/core` folder of a resolved core entry file, for the message. */
function corePackageDir(entry: string): string {
  const marker = `${sep}dist${sep}`;
  const at = entry.lastIndexOf(marker);
  return at > 0 ? entry.slice(0, at) : dirname(entry);
}

/**
 * Refuses a plugin file that would run against another copy of `@tessera/core` than the CLI's: its layer classes
 * would register with that copy's TensorFlow.js, and its models fail to load ("Unknown layer") once saved.
 */
function checkOneCore(pluginFile: string, source: string, noun: string): void {
  let pluginCore: string;
  try {
    pluginCore = realpathOr(createRequire(pluginFile).resolve('@tessera/core'));
  } catch {
    return; // the import below says what is missing
  }
  const ours = cliCoreEntry();
  if (pluginCore === ours) return;
  const dir = packageDirOf(pluginFile);
  throw new PluginError(
    `${noun} plugin ${source} would run with a second copy of @tessera/core: it resolves ${corePackageDir(pluginCore)}, ` +
      `the CLI runs with ${corePackageDir(ours)}. TensorFlow.js layers and engines belong to one copy, so models of the ` +
      'plugin would fail to load ("Unknown layer") after training.',
    `Use one copy: keep @tessera/core a peerDependency of the plugin and develop against the CLI's own copy (npm install ` +
      `--save-dev ${corePackageDir(ours)} in ${dir}, which links it), or install the plugin beside the CLI (npm install ${dir}).`,
  );
}

/** The package name in an ERR_MODULE_NOT_FOUND message ("Cannot find package 'x' imported from ..."). */
function missingPackage(message: string): string | undefined {
  return /Cannot find (?:package|module) '([^']+)'/.exec(message)?.[1];
}

interface Imported<P = ArchitecturePlugin<object>> {
  plugin: P;
  url: string;
}

/** Imports a plugin module by path or package name and calls its default-exported factory. */
export async function importPlugin<P = ArchitecturePlugin<object>>(
  specifier: string,
  fromDir: string,
  source: string,
  kind: PluginKind<P> = ARCHITECTURES as unknown as PluginKind<P>,
): Promise<Imported<P>> {
  const { noun, flag } = kind;
  const lower = noun.toLowerCase();
  let path: string;
  if (specifier.startsWith('.') || isAbsolute(specifier)) {
    path = resolve(specifier);
    if (!existsSync(path)) {
      throw new PluginError(`${noun} plugin file ${path} does not exist.`, `Check the path given to ${flag}.`);
    }
  } else {
    try {
      path = createRequire(join(fromDir, 'noop.js')).resolve(specifier);
    } catch (error) {
      throw new PluginError(
        `${noun} plugin package "${specifier}" cannot be resolved from ${fromDir}: ${(error as Error).message.split('\n')[0]}`,
        `Install it: npm install ${specifier}`,
      );
    }
  }
  checkOneCore(path, source, noun);
  const url = pathToFileURL(path).href;
  let mod: { default?: unknown; plugin?: unknown };
  try {
    mod = (await import(url)) as typeof mod;
  } catch (error) {
    const e = error as { code?: string; message?: string };
    const first = String(e.message).split('\n')[0];
    if (e.code === 'ERR_MODULE_NOT_FOUND' || e.code === 'MODULE_NOT_FOUND') {
      const missing = missingPackage(String(e.message));
      const dir = packageDirOf(path);
      throw new PluginError(
        `${noun} plugin ${source} imports ${missing ? `"${missing}"` : 'a module'}, which cannot be found: ${first}`,
        missing === '@tessera/core'
          ? `The plugin's peer @tessera/core must be the CLI's: install the plugin beside the CLI (npm install ${dir}), or link the CLI's core into it (npm install --save-dev ${corePackageDir(cliCoreEntry())} in ${dir}).`
          : `Install the plugin's dependencies (cd ${dir} && npm install), or install the plugin beside the CLI (npm install ${dir}).`,
      );
    }
    throw new PluginError(
      `Could not import ${lower} plugin ${source}: ${first}`,
      'Fix the error in the plugin (run its tests: npm test), or uninstall it.',
    );
  }
  const exported = mod.default ?? mod.plugin;
  let plugin: unknown;
  try {
    plugin = typeof exported === 'function' ? (exported as () => unknown)() : exported;
  } catch (error) {
    if (error instanceof TesseraError) throw error;
    throw new PluginError(
      `The factory of ${lower} plugin ${source} failed: ${String((error as Error)?.message).split('\n')[0]}`,
    );
  }
  if (!plugin || typeof plugin !== 'object') {
    throw new PluginError(
      `${source} does not export a${noun === 'Architecture' ? 'n' : ''} ${lower} plugin: its default export should be a factory function returning one.`,
    );
  }
  return { plugin: kind.validate(plugin, source), url };
}

/** True when `--arch` names a file or package to load rather than a registered name. */
export function isPluginReference(arch: string, patterns = PLUGIN_PATTERNS): boolean {
  return (
    arch.startsWith('.') ||
    isAbsolute(arch) ||
    arch.endsWith('.js') ||
    arch.endsWith('.mjs') ||
    patterns.some((re) => re.test(arch))
  );
}

/** An installed plugin package that was left out of the registry, and why. */
export interface SkippedPlugin {
  /** The package name. */
  package: string;
  /** The architecture name, when the package got as far as naming it. */
  name?: string;
  error: TesseraError;
}

/** What {@link loadRegistry} found. */
export interface LoadedRegistry {
  registry: ArchitectureRegistry;
  /** Registered name of the plugin given as `extra`, if any. */
  extraName?: string;
  /** Module URLs of the registered plugins, in registration order (training and slide workers import them). */
  modules: string[];
  /** Module URL of each registered architecture, by name. */
  moduleOf: Map<string, string>;
  /** Installed packages left out with a warning (wrong plugin API, broken import, duplicate name). */
  skipped: SkippedPlugin[];
}

const loaded = new Map<string, Promise<LoadedRegistry>>();

/**
 * A registry of every installed architecture plugin, plus one loaded from a file path or package name (`extra`, the
 * value of `--arch`). Loaded once per process and `extra`.
 *
 * - An installed package that cannot be used (another plugin API, a failing import, a name taken by another package)
 *   is left out with a warning naming it; {@link getArchitecture} fails with its error only when it is asked for.
 * - A plugin given by path or package name wins over an installed package of the same architecture name, with a
 *   warning naming both (the model manifest then records the given plugin's version).
 * - A plugin that would run with another copy of `@tessera/core` than the CLI's is refused, naming both copies.
 */
export function loadRegistry(extra?: string): Promise<LoadedRegistry> {
  const key = `${process.cwd()}\0${extra ?? ''}`;
  let result = loaded.get(key);
  if (!result) {
    result = buildRegistry(extra);
    loaded.set(key, result);
    result.catch(() => loaded.delete(key));
  }
  return result;
}

async function buildRegistry(extra?: string): Promise<LoadedRegistry> {
  const registry = new ArchitectureRegistry();
  const modules: string[] = [];
  const moduleOf = new Map<string, string>();
  const skipped: SkippedPlugin[] = [];
  const packages = findPluginPackages();
  let given: (Imported & { source: string }) | undefined;
  if (extra && isPluginReference(extra)) {
    const source = extra.startsWith('.') || isAbsolute(extra) ? `file ${resolve(extra)}` : `package ${extra}`;
    given = { ...(await importPlugin(extra, process.cwd(), source)), source };
  }
  const add = (plugin: ArchitecturePlugin<object>, url: string, source: string) => {
    registry.register(plugin, { source });
    modules.push(url);
    moduleOf.set(plugin.name, url);
  };
  // The default architecture first.
  const ordered = [...packages.keys()].sort((a, b) =>
    a === '@tessera/arch-unet' ? -1 : b === '@tessera/arch-unet' ? 1 : a.localeCompare(b),
  );
  for (const name of ordered) {
    if (extra === name) continue;
    const source = `package ${name}`;
    let imported: Imported;
    try {
      imported = await importPlugin(name, dirname(packages.get(name)!), source);
    } catch (error) {
      if (!(error instanceof TesseraError)) throw error;
      const archName = /^Architecture "([a-z][a-z0-9-]*)"/.exec(error.message)?.[1];
      skipped.push({ package: name, name: archName, error });
      warn({}, `skipped the installed plugin ${name}: ${error.message}`);
      continue;
    }
    const { plugin, url } = imported;
    if (given && plugin.name === given.plugin.name) {
      warn(
        {},
        `architecture "${plugin.name}" ${given.plugin.version} from ${given.source} is used instead of the installed ${source} ` +
          `(version ${plugin.version}), which has the same name`,
      );
      continue;
    }
    if (registry.has(plugin.name)) {
      const error = new PluginError(
        `An architecture named "${plugin.name}" is installed twice: from ${registry.origin(plugin.name).source} and from ${source}.`,
        'Uninstall one of the two packages, or give --arch the path or package of the one you mean.',
      );
      skipped.push({ package: name, name: plugin.name, error });
      warn({}, `skipped the installed plugin ${name}: ${error.message}`);
      continue;
    }
    add(plugin, url, source);
  }
  if (given) add(given.plugin, given.url, given.source);
  return { registry, extraName: given?.plugin.name, modules, moduleOf, skipped };
}

/**
 * The architecture named `name` (or given to {@link loadRegistry} as `extra`).
 *
 * @throws the error of an installed package that was skipped under this name or package name; otherwise the
 * registry's UnknownNameError with "did you mean".
 */
export function getArchitecture(loadedRegistry: LoadedRegistry, name: string): ArchitecturePlugin<object> {
  const { registry, skipped } = loadedRegistry;
  if (registry.has(name)) return registry.get(name);
  const failed = skipped.find((s) => s.name === name || s.package === name);
  if (failed) throw failed.error;
  return registry.get(name);
}

const versionWarned = new Set<string>();

/**
 * Warns when the model was made by another version of its architecture plugin than the one loaded now: layers,
 * options and ONNX converters may differ between versions.
 */
export function warnPluginVersion(loadedRegistry: LoadedRegistry, manifest: ModelManifest, model: string): void {
  const { name, version } = manifest.architecture;
  if (!loadedRegistry.registry.has(name)) return;
  const plugin = loadedRegistry.registry.get(name);
  if (version === undefined || plugin.version === version) return;
  const key = `${resolve(model)}\0${plugin.version}`;
  if (versionWarned.has(key)) return;
  versionWarned.add(key);
  warn(
    {},
    `the model ${model} was made with architecture "${name}" version ${version}, but ${loadedRegistry.registry.origin(name).source} ` +
      `is version ${plugin.version}: if its layers changed, the model may not load or may predict differently. ` +
      `Install version ${version} of the plugin to use the model as it was trained.`,
  );
}
