/**
 * Acceptance of third-party architecture plugins, on the packages as users get them: `npm pack` tarballs of the
 * workspace packages and of the example plugin `examples/arch-linknet`, installed into temporary projects outside the
 * workspace (third-party dependencies come from npm's cache or the registry).
 *
 * a. `@tessera/core` + `@tessera/arch-unet` + `@tessera/cli` alone: `tessera archs` lists only U-Net; train, predict.
 * b. The same plus `tessera-arch-linknet`: its own conformance tests pass there; `tessera archs` lists it as a
 *    package; train and predict with `--arch linknet`.
 * c. `tessera create-plugin` writes a package that passes the kit as written; broken copies fail with clear messages.
 *
 * Needs `npm run build` first (the tarballs hold `dist/`). Keep `TESSERA_KEEP_ACCEPTANCE=1` to keep the temp folder.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRandom, randSyntheticTissue, readImage, writePng } from '@tessera/core';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLE = join(ROOT, 'examples/arch-linknet');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/**
 * The environment of every child process: without the npm_* variables of an enclosing `npm test` (a `prefix` from the
 * workspace would install into it) nor vitest's own, with the wasm engine and onnxruntime's download skipped.
 */
const ENV: NodeJS.ProcessEnv = {
  ...Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) =>
        !/^(npm_|VITEST|TINYPOOL|INIT_CWD$)/i.test(key) || /^npm_config_(cache|registry|userconfig)$/i.test(key),
    ),
  ),
  npm_config_onnxruntime_node_install: 'skip',
  npm_config_update_notifier: 'false',
  TESSERA_BACKEND: 'wasm',
  NO_COLOR: '1',
};

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[], cwd: string): Result {
  const r = spawnSync(command, args, { cwd, env: ENV, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command that must succeed; fails with its output otherwise. */
function must(command: string, args: string[], cwd: string): Result {
  const r = run(command, args, cwd);
  if (r.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} (in ${cwd}) exited with ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r;
}

/** The installed `tessera` command of a project, as npm linked it. */
function tessera(project: string, args: string[]): Result {
  return run(join(project, 'node_modules/.bin/tessera'), args, project);
}

const seconds: Record<string, number> = {};
function timed<R>(what: string, fn: () => R): R {
  const start = performance.now();
  try {
    return fn();
  } finally {
    seconds[what] = Math.round((performance.now() - start) / 100) / 10;
  }
}

let work: string;
let images: string;
let masks: string;
let classes: string;
const tarballs: Record<string, string> = {};

/** A fresh project folder in which only `specs` (tarball paths, or registry specs) are installed. */
async function project(name: string, specs: string[]): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir);
  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: `acceptance-${name}`, private: true }) + '\n');
  timed(`npm install (${name})`, () =>
    must(NPM, ['install', '--no-audit', '--no-fund', '--prefer-offline', ...specs], dir),
  );
  return dir;
}

/** Tiny training run: 1 epoch of 2 steps on 32x32 crops. */
function trainArgs(out: string, arch: string[]): string[] {
  return [
    'train',
    ...arch,
    '--images',
    images,
    '--masks',
    masks,
    '--classes',
    classes,
    '--out',
    out,
    '--epochs',
    '1',
    '--steps-per-epoch',
    '2',
    '--tile',
    '32',
    '--batch',
    '2',
    '--json',
  ];
}

/** Trains with `arch` in `dir`, predicts the images, and checks the model folder and the label maps. */
async function trainAndPredict(dir: string, arch: string[], expected: { name: string; version: string }) {
  const model = join(dir, 'model');
  const train = timed(`train ${expected.name}`, () => tessera(dir, trainArgs(model, arch)));
  expect(train.code, train.stderr).toBe(0);
  for (const file of ['model.json', 'weights.bin', 'manifest.json'])
    expect(existsSync(join(model, file)), file).toBe(true);
  const manifest = JSON.parse(await readFile(join(model, 'manifest.json'), 'utf8'));
  expect(manifest.architecture).toMatchObject(expected);
  const out = join(dir, 'predictions');
  const predict = timed(`predict ${expected.name}`, () =>
    tessera(dir, ['predict', '--model', model, images, '--out', out]),
  );
  expect(predict.code, predict.stderr).toBe(0);
  for (let i = 0; i < 3; i++) {
    const labels = await readImage(join(out, `tile-${i}_labels.png`));
    expect([labels.width, labels.height]).toEqual([64, 64]);
  }
}

beforeAll(async () => {
  for (const pkg of ['packages/core', 'packages/arch-unet', 'apps/cli']) {
    if (!existsSync(join(ROOT, pkg, 'dist/index.js'))) {
      throw new Error(`${pkg}/dist is missing: run "npm run build" at the repository root first.`);
    }
  }
  work = await realpath(await mkdtemp(join(tmpdir(), 'tessera-acceptance-')));
  const packs = join(work, 'tarballs');
  await mkdir(packs);
  const workspaces = ['@tessera/core', '@tessera/arch-unet', '@tessera/cli'];
  const packed = timed('npm pack', () => [
    ...JSON.parse(
      must(NPM, ['pack', '--json', '--pack-destination', packs, ...workspaces.flatMap((w) => ['--workspace', w])], ROOT)
        .stdout,
    ),
    ...JSON.parse(must(NPM, ['pack', '--json', '--pack-destination', packs], EXAMPLE).stdout),
  ]) as { name: string; filename: string; files: { path: string }[] }[];
  for (const p of packed) tarballs[p.name] = join(packs, p.filename);
  expect(Object.keys(tarballs).sort()).toEqual([...workspaces, 'tessera-arch-linknet'].sort());
  const cliFiles = packed.find((p) => p.name === '@tessera/cli')!.files.map((f) => f.path);
  expect(cliFiles).toEqual(expect.arrayContaining(['dist/bin.js', 'templates/plugin/index.js', 'README.md']));

  images = join(work, 'data/images');
  masks = join(work, 'data/masks');
  classes = join(work, 'data/classes.json');
  await mkdir(images, { recursive: true });
  await mkdir(masks, { recursive: true });
  const rng = createRandom(5);
  for (let i = 0; i < 3; i++) {
    const { image, mask } = randSyntheticTissue({ width: 64, height: 64, density: 30 }, rng.fork(i));
    await writePng(join(images, `tile-${i}.png`), image);
    await writePng(join(masks, `tile-${i}.png`), { data: mask.data, width: 64, height: 64, channels: 1 });
  }
  await writeFile(
    classes,
    JSON.stringify({
      classes: [
        { name: 'background', value: 0, color: '#000000' },
        { name: 'nucleus', value: 1, color: '#0000ff' },
      ],
    }),
  );
}, 180_000);

afterAll(async () => {
  console.log(`acceptance timings (s): ${JSON.stringify(seconds, null, 1)}`);
  if (work && !process.env.TESSERA_KEEP_ACCEPTANCE) await rm(work, { recursive: true, force: true });
});

describe('architecture plugins installed from tarballs, outside the workspace', () => {
  const TINY_UNET = ['--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'];
  let withLinknet: string;

  it('a. core + arch-unet + cli alone: tessera archs lists only unet; train and predict work', async () => {
    const dir = await project('unet-only', [
      tarballs['@tessera/core'],
      tarballs['@tessera/arch-unet'],
      tarballs['@tessera/cli'],
    ]);
    // Nothing else of Tessera came along (no fcn8s, deeplab or tiler from the registry).
    expect(readdirSync(join(dir, 'node_modules/@tessera')).sort()).toEqual(['arch-unet', 'cli', 'core']);
    const archs = timed('archs (unet only)', () => tessera(dir, ['archs', '--json']));
    expect(archs.code, archs.stderr).toBe(0);
    const listed = JSON.parse(archs.stdout) as { name: string; source: string; inputMultiple: number }[];
    expect(listed.map((a) => [a.name, a.source, a.inputMultiple])).toEqual([
      ['unet', 'package @tessera/arch-unet', 16],
    ]);
    await trainAndPredict(dir, TINY_UNET, { name: 'unet', version: '0.1.0' });
  }, 240_000);

  it('b. plus tessera-arch-linknet: its conformance tests pass there; archs lists it; train and predict', async () => {
    withLinknet = await project('with-linknet', [
      tarballs['@tessera/core'],
      tarballs['@tessera/arch-unet'],
      tarballs['@tessera/cli'],
      tarballs['tessera-arch-linknet'],
      'vitest@3.2.4',
    ]);
    const dir = withLinknet;
    const archs = timed('archs (unet, linknet)', () => tessera(dir, ['archs', '--json']));
    expect(archs.code, archs.stderr).toBe(0);
    const listed = JSON.parse(archs.stdout) as { name: string; source: string; inputMultiple: number }[];
    expect(listed.map((a) => [a.name, a.source, a.inputMultiple])).toEqual([
      ['unet', 'package @tessera/arch-unet', 16],
      ['linknet', 'package tessera-arch-linknet', 64],
    ]);

    // The example's own test file, against the installed package instead of its source folder.
    const test = await readFile(join(EXAMPLE, 'index.test.js'), 'utf8');
    expect(test).toContain("from './index.js'");
    await writeFile(join(dir, 'linknet.test.js'), test.replace("from './index.js'", "from 'tessera-arch-linknet'"));
    const conformance = timed('linknet conformance (vitest)', () =>
      run(join(dir, 'node_modules/.bin/vitest'), ['run', 'linknet.test.js'], dir),
    );
    expect(conformance.code, conformance.stdout + conformance.stderr).toBe(0);
    expect(conformance.stdout).toMatch(/Tests\s+6 passed/);

    await trainAndPredict(dir, ['--arch', 'linknet', '--arch-option', 'depth=2', '--arch-option', 'baseFilters=4'], {
      name: 'linknet',
      version: '0.1.0',
    });
  }, 300_000);

  it('c. tessera create-plugin writes a package that passes the kit; broken copies fail with clear messages', async () => {
    expect(withLinknet, 'case b installs the project this case uses').toBeDefined();
    const dir = withLinknet;
    const plugin = join(dir, 'plugins/tessera-arch-demo-net');
    const created = tessera(dir, ['create-plugin', 'demo-net', '--dir', plugin]);
    expect(created.code, created.stderr).toBe(0);
    expect(readdirSync(plugin).sort()).toEqual([
      '.gitignore',
      'README.md',
      'index.js',
      'index.test.js',
      'package.json',
    ]);
    const pkg = JSON.parse(await readFile(join(plugin, 'package.json'), 'utf8'));
    expect(pkg).toMatchObject({
      name: 'tessera-arch-demo-net',
      type: 'module',
      peerDependencies: { '@tessera/core': '^0.1.0' },
    });
    // Writing over it again is refused.
    const again = tessera(dir, ['create-plugin', 'demo-net', '--dir', plugin]);
    expect(again.code).toBe(10);
    expect(again.stderr).toContain('exists and is not empty');

    const vitest = (root: string) => run(join(dir, 'node_modules/.bin/vitest'), ['run', '--root', root], dir);
    const fresh = timed('scaffold conformance (vitest)', () => vitest(plugin));
    expect(fresh.code, fresh.stdout + fresh.stderr).toBe(0);
    expect(fresh.stdout).toMatch(/Tests\s+5 passed/);
    const archs = tessera(dir, ['archs', '--json', '--arch', './plugins/tessera-arch-demo-net/index.js']);
    expect(archs.code, archs.stderr).toBe(0);
    expect(JSON.parse(archs.stdout).map((a: { name: string; source: string }) => [a.name, a.source])).toContainEqual([
      'demo-net',
      `file ${join(plugin, 'index.js')}`,
    ]);

    // One class too many in the output layer: the kit names the architecture, the case and the shapes.
    const wrongClasses = join(dir, 'plugins/wrong-classes');
    await cp(plugin, wrongClasses, { recursive: true });
    const source = await readFile(join(plugin, 'index.js'), 'utf8');
    expect(source).toContain('filters: numClasses,');
    await writeFile(join(wrongClasses, 'index.js'), source.replace('filters: numClasses,', 'filters: numClasses + 1,'));
    const broken = timed('broken scaffold (vitest)', () => vitest(wrongClasses));
    expect(broken.code).not.toBe(0);
    expect(broken.stdout + broken.stderr).toMatch(
      /Expected output shape \[1, 8, 4, 2\] from architecture "demo-net" with options \{"depth":2,"filters":16\} on a \[1, 8, 4, 1\] input but received \[1, 8, 4, 3\]/,
    );

    // Written for another plugin API: refused on loading, naming both versions, exit code 8.
    const otherApi = join(dir, 'plugins/other-api');
    await cp(plugin, otherApi, { recursive: true });
    expect(source).toContain('apiVersion: ARCHITECTURE_API_VERSION,');
    await writeFile(
      join(otherApi, 'index.js'),
      source.replace('apiVersion: ARCHITECTURE_API_VERSION,', 'apiVersion: 99,'),
    );
    const refused = tessera(dir, ['archs', '--arch', './plugins/other-api/index.js']);
    expect(refused.code).toBe(8);
    expect(refused.stderr).toContain(
      `Architecture "demo-net" from file ${join(otherApi, 'index.js')} was written for plugin API version 99, but this @tessera/core speaks version 1.`,
    );
  }, 240_000);
});
