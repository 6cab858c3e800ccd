import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { ARCHITECTURE_API_VERSION, CORE_VERSION, InvalidOptionError, OutputError } from '@tessera/core';
import { info } from '../progress.js';

/** Options of `tessera create-plugin`. */
export interface CreatePluginCliOptions {
  /** Folder to write the package into. Default `./tessera-arch-<name>`. */
  dir?: string;
  /** A TypeScript package (`src/index.ts` compiled to `dist/`) instead of a plain ES module. */
  typescript?: boolean;
  quiet?: boolean;
  json?: boolean;
}

/** Files of the scaffolds, read from `templates/plugin/` (JavaScript) or `templates/plugin-ts/` of this package. */
const TEMPLATE_FILES: Record<'js' | 'ts', Record<string, string>> = {
  js: {
    'index.js': 'index.js',
    'index.test.js': 'index.test.js',
    'README.md': 'README.md',
    gitignore: '.gitignore', // npm pack leaves out files named .gitignore
  },
  ts: {
    'src/index.ts': 'src/index.ts',
    'test/conformance.test.ts': 'test/conformance.test.ts',
    'tsconfig.json': 'tsconfig.json',
    'README.md': 'README.md',
    gitignore: '.gitignore',
  },
};

/** vitest and TypeScript versions the scaffolds use (the ones Tessera is tested and built with). */
const VITEST_VERSION = '3.2.4';
const TYPESCRIPT_VERSION = '5.9.3';

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
  const kind = opts.typescript ? 'ts' : 'js';
  const templates = new URL(`../../templates/${kind === 'ts' ? 'plugin-ts' : 'plugin'}/`, import.meta.url);
  const fill = (text: string) => text.replaceAll('__PACKAGE__', packageName).replaceAll('__NAME__', bare);
  const files: Record<string, string> = {
    'package.json': JSON.stringify(packageJson(packageName, bare, kind), null, 2) + '\n',
  };
  for (const [template, target] of Object.entries(TEMPLATE_FILES[kind])) {
    files[target] = fill(await readFile(new URL(template, templates), 'utf8'));
  }
  try {
    for (const [file, text] of Object.entries(files)) {
      await mkdir(dirname(join(dir, file)), { recursive: true });
      await writeFile(join(dir, file), text);
    }
  } catch (error) {
    throw new OutputError(`Could not write the plugin into ${dir}: ${(error as Error).message}`, undefined, error);
  }
  const where = relative(process.cwd(), dir) || '.';
  if (opts.json) {
    process.stdout.write(JSON.stringify({ name: bare, package: packageName, dir, files: Object.keys(files) }) + '\n');
  }
  const entry = kind === 'ts' ? 'dist/index.js' : 'index.js';
  info(
    opts,
    `wrote ${packageName} (architecture "${bare}", plugin API ${ARCHITECTURE_API_VERSION}${kind === 'ts' ? ', TypeScript' : ''}) into ${where}:\n` +
      `  cd ${where} && npm install && npm test      # the conformance kit${kind === 'ts' ? ' (builds dist/ first)' : ''}\n` +
      `  tessera check-plugin ./${join(where, entry)}      # the kit through the CLI's loading path\n` +
      `  tessera train --arch ./${join(where, entry)} ...      # use it before publishing`,
  );
}

/**
 * The scaffold's package.json. `@tessera/core` is a peer dependency marked optional: npm then never installs a copy
 * of its own into the plugin's folder (which would be a second copy beside the CLI's, and which the registry may not
 * even have); Node finds the copy of the project around the folder, the one the CLI runs with.
 */
function packageJson(packageName: string, name: string, kind: 'js' | 'ts') {
  const common = {
    name: packageName,
    version: '0.1.0',
    description: `The ${name} architecture plugin for Tessera`,
    type: 'module',
    license: 'Apache-2.0',
    sideEffects: false,
  };
  const peers = {
    peerDependencies: { '@tessera/core': `^${CORE_VERSION}` },
    peerDependenciesMeta: { '@tessera/core': { optional: true } },
  };
  if (kind === 'js') {
    return {
      ...common,
      main: './index.js',
      exports: { '.': './index.js', './package.json': './package.json' },
      files: ['index.js', 'README.md'],
      keywords: ['tessera-architecture'],
      engines: { node: '>=20.9.0' },
      scripts: { test: 'vitest run' },
      ...peers,
      devDependencies: { vitest: VITEST_VERSION },
    };
  }
  return {
    ...common,
    main: './dist/index.js',
    types: './dist/index.d.ts',
    exports: {
      '.': { types: './dist/index.d.ts', default: './dist/index.js' },
      './package.json': './package.json',
    },
    files: ['dist', '!dist/**/*.map', 'README.md'],
    keywords: ['tessera-architecture'],
    engines: { node: '>=20.9.0' },
    scripts: { build: 'tsc -p tsconfig.json', pretest: 'npm run build', test: 'vitest run', prepack: 'npm run build' },
    ...peers,
    devDependencies: { typescript: TYPESCRIPT_VERSION, vitest: VITEST_VERSION },
  };
}
