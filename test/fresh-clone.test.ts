/**
 * The README's "Using the command" on a fresh clone: after `npm ci && npm run build`, `npx tessera` runs Tessera's
 * command (not an unrelated registry package of that name). npm links a package's command when it installs it, before
 * `npm run build` has made `dist/`; the command is therefore a source file, `apps/cli/bin/tessera.js`, which runs the
 * build (or says to build first).
 *
 * The clone is the working tree as git sees it (tracked files and untracked ones that are not ignored, as they are on
 * disk), copied into a temporary folder with `../shared` beside it as `.ci/run` expects. Slow: a whole `npm ci` (from
 * npm's cache) and build. Keep `TESSERA_KEEP_ACCEPTANCE=1` to keep the folder.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const NPX = process.platform === 'win32' ? 'npx.cmd' : 'npx';

/** Without the npm_* variables of an enclosing `npm test` nor vitest's own. */
const ENV: NodeJS.ProcessEnv = {
  ...Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) =>
        !/^(npm_|VITEST|TINYPOOL|INIT_CWD$)/i.test(key) || /^npm_config_(cache|registry|userconfig)$/i.test(key),
    ),
  ),
  npm_config_update_notifier: 'false',
  NX_DAEMON: 'false',
  NX_NO_CLOUD: 'true',
  NO_COLOR: '1',
};

function run(command: string, args: string[], cwd: string) {
  const r = spawnSync(command, args, { cwd, env: ENV, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

let work: string | undefined;

afterAll(async () => {
  if (work && !process.env.TESSERA_KEEP_ACCEPTANCE) await rm(work, { recursive: true, force: true });
});

describe('a fresh clone', () => {
  it('npm ci && npm run build, then npx tessera --help runs Tessera', async () => {
    work = await realpath(await mkdtemp(join(tmpdir(), 'tessera-clone-')));
    const clone = join(work, 'tessera');
    const listed = run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], ROOT);
    expect(listed.code, listed.stderr).toBe(0);
    const files = [...new Set(listed.stdout.split('\0').filter(Boolean))];
    for (const file of files) {
      if (!existsSync(join(ROOT, file))) continue; // deleted in the working tree
      await mkdir(dirname(join(clone, file)), { recursive: true });
      await copyFile(join(ROOT, file), join(clone, file));
    }
    if (existsSync(join(ROOT, '../shared'))) await symlink(join(ROOT, '../shared'), join(work, 'shared'));
    expect(existsSync(join(clone, 'node_modules'))).toBe(false);

    const ci = run(NPM, ['ci', '--prefer-offline', '--no-audit', '--no-fund'], clone);
    expect(ci.code, ci.stdout + ci.stderr).toBe(0);
    // The project's npm settings are all known to npm, and every install script is reviewed in allowScripts (npm 11):
    // onnxruntime-node's, which would download its CUDA provider, is denied there.
    expect(ci.stderr).not.toMatch(/Unknown project config/);
    expect(ci.stderr).not.toMatch(/not yet covered by allowScripts/);
    // Linked at install time, before the build.
    expect(existsSync(join(clone, 'node_modules/.bin/tessera'))).toBe(true);
    const early = run(NPX, ['tessera', '--help'], clone);
    expect(early.code).toBe(1);
    expect(early.stderr).toContain('hint: run "npm run build" at the root of the Tessera repository');

    const build = run(NPM, ['run', 'build'], clone);
    expect(build.code, build.stdout + build.stderr).toBe(0);
    const help = run(NPX, ['tessera', '--help'], clone);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toContain('Usage: tessera [options] [command]');
    expect(help.stdout).toContain('Semantic segmentation of microscopy and whole-slide images');
    expect(help.stdout).toContain('check-plugin');
    console.log(`npx tessera --help in a fresh clone:\n${help.stdout}`);
  }, 1_200_000);
});
