import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { ARCHITECTURE_API_VERSION, CORE_VERSION, InvalidOptionError, OutputError } from '@tessera/core';
import { info } from '../progress.js';

/** Options of `tessera create-plugin`. */
export interface CreatePluginCliOptions {
  /** Folder to write the package into. Default `./tessera-arch-<name>`. */
  dir?: string;
  quiet?: boolean;
  json?: boolean;
}

/** Files of the scaffold, read from `templates/plugin/` of this package, and the names they are written under. */
const TEMPLATE_FILES: Record<string, string> = {
  'index.js': 'index.js',
  'index.test.js': 'index.test.js',
  'README.md': 'README.md',
  gitignore: '.gitignore', // npm pack leaves out files named .gitignore
};

/** vitest version the scaffold's tests run with (the one Tessera is tested with). */
const VITEST_VERSION = '3.2.4';

/**
 * `tessera create-plugin <name> [--dir <path>]`: writes a package `tessera-arch-<name>` holding a small working
 * encoder/decoder architecture plugin (plain ES module, no build step), its conformance tests (vitest, the kit of
 * `@tessera/core/testing`) and a README. The plugin passes the kit as written.
 *
 * @throws InvalidOptionError when `name` is not lower-case kebab.
 * @throws OutputError when the folder exists and is not empty, or cannot be written.
 */
export async function createPluginCommand(name: string, opts: CreatePluginCliOptions): Promise<void> {
  const bare = name.replace(/^tessera-arch-/, '');
  if (!/^[a-z][a-z0-9-]*$/.test(bare) || bare.endsWith('-')) {
    throw new InvalidOptionError(
      `Expected a plugin name of lower-case letters, digits and "-", starting with a letter, but received "${name}".`,
      'Example: tessera create-plugin attention-unet',
    );
  }
  const packageName = `tessera-arch-${bare}`;
  const dir = resolve(opts.dir ?? packageName);
  let entries: string[] = [];
  try {
    entries = await readdir(dir);
  } catch {
    // does not exist yet
  }
  if (entries.length > 0) {
    throw new OutputError(
      `Folder ${dir} exists and is not empty; refusing to write the plugin ${packageName} over it.`,
      'Choose another folder with --dir, or remove this one.',
    );
  }
  const templates = new URL('../../templates/plugin/', import.meta.url);
  const fill = (text: string) => text.replaceAll('__PACKAGE__', packageName).replaceAll('__NAME__', bare);
  const files: Record<string, string> = {
    'package.json': JSON.stringify(packageJson(packageName, bare), null, 2) + '\n',
  };
  for (const [template, target] of Object.entries(TEMPLATE_FILES)) {
    files[target] = fill(await readFile(new URL(template, templates), 'utf8'));
  }
  try {
    await mkdir(dir, { recursive: true });
    for (const [file, text] of Object.entries(files)) await writeFile(join(dir, file), text);
  } catch (error) {
    throw new OutputError(`Could not write the plugin into ${dir}: ${(error as Error).message}`, undefined, error);
  }
  const where = relative(process.cwd(), dir) || '.';
  if (opts.json) {
    process.stdout.write(JSON.stringify({ name: bare, package: packageName, dir, files: Object.keys(files) }) + '\n');
  }
  info(
    opts,
    `wrote ${packageName} (architecture "${bare}", plugin API ${ARCHITECTURE_API_VERSION}) into ${where}:\n` +
      `  cd ${where} && npm install && npm test      # the conformance kit\n` +
      `  tessera archs --arch ./${join(where, 'index.js')}      # use it before publishing`,
  );
}

function packageJson(packageName: string, name: string) {
  return {
    name: packageName,
    version: '0.1.0',
    description: `The ${name} architecture plugin for Tessera`,
    type: 'module',
    license: 'Apache-2.0',
    sideEffects: false,
    main: './index.js',
    exports: { '.': './index.js', './package.json': './package.json' },
    files: ['index.js', 'README.md'],
    keywords: ['tessera-architecture'],
    engines: { node: '>=20.9.0' },
    scripts: { test: 'vitest run' },
    peerDependencies: { '@tessera/core': `^${CORE_VERSION}` },
    devDependencies: { '@tessera/core': `^${CORE_VERSION}`, vitest: VITEST_VERSION },
  };
}
