/**
 * Model packages: trained Tessera models shipped as npm packages. A model package's package.json names its model
 * folder, `"tessera": { "model": "model" }`; `tessera predict --model @tessera/model-he-nuclei` (and every other
 * place a model folder is accepted) then finds it in the node_modules folders visible from the working directory
 * and from the CLI's own location, as architecture plugins are found.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nodeModulesChain, safeReaddir } from './plugins.js';
import {
  describeValue,
  InputNotFoundError,
  MODEL_FILES,
  ModelFormatError,
  readManifest,
  type ModelManifest,
} from '@tessera/core';

/** Package-name patterns of model packages that `tessera models` lists. */
export const MODEL_PACKAGE_PATTERNS = [/^@tessera\/model-[a-z0-9-]+$/, /^tessera-model-[a-z0-9-]+$/];

/** A valid npm package name, optionally followed by `@<version>` (what `name@version` provenance records). */
const PACKAGE_REFERENCE = /^((?:@[a-z0-9-~][a-z0-9-._~]*\/)?[a-z0-9-~][a-z0-9-._~]*)(?:@([^@/\s]+))?$/;

/** The `tessera` block of a model package's package.json. */
export interface ModelPackageField {
  /** The model folder, relative to the package folder (required). */
  model: string;
  /** One line on the training data: what, how many images, where from, under which licence. */
  data?: string;
  /** Scores on data the model was not trained or validated on. */
  evaluation?: { data: string; scores: Record<string, number> };
  /**
   * A small real image or slide the model applies to (relative to the package folder, licensed for shipping), that
   * `tessera demo` predicts to show the model on real data.
   */
  sample?: string;
}

/** A model package as found in node_modules (or given by its folder). */
export interface ModelPackage {
  /** Package name from package.json. */
  name: string;
  version: string;
  /** package.json `license`: the licence of the weights, `null` when absent. */
  license: string | null;
  description: string | null;
  /** The package folder. */
  packageDir: string;
  /** `tessera` block of package.json. */
  tessera: ModelPackageField;
  /** The model folder (absolute). */
  dir: string;
  /** The `tessera.sample` file (absolute), `null` when the package names none. */
  sample: string | null;
  /** `name@version`, as model provenance records it. */
  source: string;
}

/** What {@link resolveModelReference} resolved a model reference to. */
export interface ResolvedModel {
  /** The model folder: the reference itself when it is a folder, else the folder inside the model package. */
  dir: string;
  /** How to name the model in provenance: the folder as given, or `name@version` of the model package. */
  source: string;
}

/** node_modules folders visible from `cwd`, then those visible from the CLI's own location. */
function searchPath(cwd: string): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  return [...new Set([...nodeModulesChain(cwd), ...nodeModulesChain(here)])];
}

/**
 * Installed packages named like model packages (`@tessera/model-*`, `tessera-model-*`) visible from `cwd` and from
 * the CLI's own location, by name, each with its package folder (the first one found, nearest `cwd` first).
 */
export function findModelPackages(cwd = process.cwd()): Map<string, string> {
  const found = new Map<string, string>();
  for (const nm of searchPath(cwd)) {
    const names: string[] = [];
    for (const entry of safeReaddir(nm)) {
      if (entry.startsWith('tessera-model-')) names.push(entry);
      if (entry === '@tessera') for (const sub of safeReaddir(join(nm, '@tessera'))) names.push(`@tessera/${sub}`);
    }
    for (const name of names) {
      if (MODEL_PACKAGE_PATTERNS.some((re) => re.test(name)) && !found.has(name)) found.set(name, join(nm, name));
    }
  }
  return found;
}

/** The folder of the installed package `name` visible from `cwd` or the CLI, if any. */
function findPackage(name: string, cwd: string): string | undefined {
  for (const nm of searchPath(cwd)) {
    const dir = join(nm, name);
    if (existsSync(join(dir, 'package.json'))) return dir;
  }
  return undefined;
}

/**
 * Reads the package.json of a model package in `packageDir` and checks its `tessera.model` folder.
 *
 * @throws ModelFormatError naming the package when package.json cannot be read, has no `"tessera": { "model": ... }`,
 * or names a folder outside the package or without a manifest.json.
 * @example
 * const pkg = await readModelPackage('node_modules/@tessera/model-he-nuclei'); // pkg.dir: its model folder
 */
export async function readModelPackage(packageDir: string): Promise<ModelPackage> {
  const file = join(packageDir, 'package.json');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new ModelFormatError(
      `Cannot read the package.json of ${packageDir}: ${(error as Error).message.split('\n')[0]}`,
      'Reinstall the package (npm install <name>).',
      error,
    );
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) {
    throw new ModelFormatError(
      `The package.json of ${packageDir} is ${describeValue(json)}, expected an object.`,
      'Reinstall the package (npm install <name>).',
    );
  }
  const name = typeof json.name === 'string' ? json.name : packageDir;
  const label = `Package ${name} (${packageDir})`;
  const field = json.tessera as Partial<ModelPackageField> | undefined;
  if (!field || typeof field !== 'object' || typeof field.model !== 'string' || field.model === '') {
    throw new ModelFormatError(
      `${label} is not a Tessera model package: expected "tessera": { "model": "<folder>" } in its package.json but ` +
        `"tessera" is ${describeValue(json.tessera)}.`,
      'A model package names its model folder (model.json, weights.bin, manifest.json) in package.json, e.g. ' +
        '"tessera": { "model": "model" }; see docs/model-packages.md.',
    );
  }
  const inPackage = (key: 'model' | 'sample', value: string, example: string): string => {
    const path = resolve(packageDir, value);
    const inside = relative(resolve(packageDir), path);
    if (isAbsolute(value) || inside.startsWith('..') || isAbsolute(inside)) {
      throw new ModelFormatError(
        `${label} names "${value}" in "tessera.${key}", which is outside the package.`,
        `Give a path inside the package, relative to its package.json, e.g. "tessera": { "${key}": "${example}" }.`,
      );
    }
    return path;
  };
  const dir = inPackage('model', field.model, 'model');
  if (!existsSync(join(dir, MODEL_FILES.manifest))) {
    throw new ModelFormatError(
      `${label} names the model folder "${field.model}" in "tessera.model", but ${dir} has no ${MODEL_FILES.manifest}.`,
      `The folder must hold a model written by "tessera train" (${Object.values(MODEL_FILES).join(', ')}); ` +
        'check the package\'s "files" in package.json, then reinstall it.',
    );
  }
  let sample: string | null = null;
  if (field.sample !== undefined) {
    if (typeof field.sample !== 'string' || field.sample === '') {
      throw new ModelFormatError(
        `${label} has "tessera.sample" ${describeValue(field.sample)}, expected a file name.`,
        'Name an image or slide inside the package, e.g. "tessera": { "sample": "sample/region.tif" }, or leave it out.',
      );
    }
    sample = inPackage('sample', field.sample, 'sample/region.tif');
    if (!existsSync(sample)) {
      throw new ModelFormatError(
        `${label} names the sample "${field.sample}" in "tessera.sample", but ${sample} does not exist.`,
        'Check the package\'s "files" in package.json (the sample must be published), then reinstall it.',
      );
    }
  }
  const version = typeof json.version === 'string' ? json.version : '0.0.0';
  return {
    name,
    version,
    license: typeof json.license === 'string' ? json.license : null,
    description: typeof json.description === 'string' ? json.description : null,
    packageDir,
    tessera: field as ModelPackageField,
    dir,
    sample,
    source: `${name}@${version}`,
  };
}

/** The parsed package.json of `dir`, or `undefined` when it cannot be read or parsed. */
async function readPackageJson(dir: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The model packages visible from `cwd` that name a model folder, for an error message. */
async function installedNames(cwd: string): Promise<string> {
  const names: string[] = [];
  for (const [name, dir] of findModelPackages(cwd)) {
    const field = (await readPackageJson(dir))?.tessera as { model?: unknown } | undefined;
    if (typeof field?.model === 'string') names.push(name);
  }
  return names.length
    ? `installed model packages: ${names.sort().join(', ')} (tessera models lists them)`
    : 'no model package is installed here';
}

/**
 * Resolves what `--model` (or `--init`, or the `<model>` of `tessera export`) names: an existing path is itself (a
 * model package's own folder resolves to its model folder); a package name, optionally with `@<version>`, is the
 * model folder of that package installed in a node_modules folder visible from `cwd` or from the CLI.
 *
 * @param ref model folder, package folder, or package name (`@tessera/model-he-nuclei`, `tessera-model-x@1.0.0`)
 * @param cwd folder to resolve from (default: the working directory)
 * @returns the model folder and the name to record in provenance (`@tessera/model-he-nuclei@1.0.0` for a package)
 * @throws InputNotFoundError when nothing of that name exists or is installed, or another version is installed;
 * ModelFormatError when the package is not a valid model package (see {@link readModelPackage}).
 * @example
 * const { dir, source } = await resolveModelReference('@tessera/model-he-nuclei');
 */
export async function resolveModelReference(ref: string, cwd = process.cwd()): Promise<ResolvedModel> {
  const path = resolve(cwd, ref);
  if (existsSync(path)) {
    // A package folder (package.json with "tessera", no manifest.json of its own) stands for its model folder.
    if (isFolder(path) && !existsSync(join(path, MODEL_FILES.manifest)) && existsSync(join(path, 'package.json'))) {
      if ((await readPackageJson(path))?.tessera !== undefined) {
        const pkg = await readModelPackage(path);
        return { dir: pkg.dir, source: pkg.source };
      }
    }
    // As given (messages and records keep the user's words), unless given relative to another folder than the cwd.
    const dir = isAbsolute(ref) || resolve(cwd) === process.cwd() ? ref : path;
    return { dir, source: dir };
  }
  const match = PACKAGE_REFERENCE.exec(ref);
  const packageDir = match ? findPackage(match[1], cwd) : undefined;
  if (!match || !packageDir) {
    const pathLike = !match || ref.startsWith('.') || isAbsolute(ref);
    throw new InputNotFoundError(
      `No model folder or installed model package named "${ref}" (from ${resolve(cwd)}).`,
      (pathLike
        ? 'Give the --out folder of a "tessera train" run, or the name of an installed model package'
        : `Install it with npm install ${ref}, or give a model folder`) + `; ${await installedNames(cwd)}.`,
    );
  }
  const pkg = await readModelPackage(packageDir);
  const wanted = match[2];
  if (wanted !== undefined && wanted !== pkg.version) {
    throw new InputNotFoundError(
      `Expected version ${wanted} of model package ${pkg.name} but version ${pkg.version} is installed (${packageDir}).`,
      `Install that version (npm install ${pkg.name}@${wanted}), or give the name without a version.`,
    );
  }
  return { dir: pkg.dir, source: pkg.source };
}

/** One installed model package as `tessera models` lists it: valid with its model's facts, or invalid with why. */
export type ModelPackageEntry =
  | ({ valid: true; manifest: ModelManifest; onnx: boolean } & ModelPackage)
  | { valid: false; name: string; packageDir: string; version: string | null; reason: string };

/**
 * Every package named like a model package visible from `cwd` and from the CLI, sorted by name: each valid one with
 * its manifest, each invalid one (no `tessera.model`, a missing or unreadable model folder) with the reason.
 */
export async function listModelPackages(cwd = process.cwd()): Promise<ModelPackageEntry[]> {
  const entries: ModelPackageEntry[] = [];
  for (const [name, packageDir] of [...findModelPackages(cwd)].sort(([a], [b]) => a.localeCompare(b))) {
    try {
      const pkg = await readModelPackage(packageDir);
      const manifest = await readManifest(pkg.dir);
      entries.push({ valid: true, ...pkg, manifest, onnx: existsSync(join(pkg.dir, 'model.onnx')) });
    } catch (error) {
      const version = (await readPackageJson(packageDir))?.version;
      entries.push({
        valid: false,
        name,
        packageDir,
        version: typeof version === 'string' ? version : null,
        reason: (error as Error).message,
      });
    }
  }
  return entries;
}
