import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { viewerCommandLine } from './slide-report.js';
import { BIN, tessera } from './test-helpers.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

/** Starts `tessera view args --json` and resolves with its JSON line, the process and what it printed. */
function startView(args: string[]) {
  const child = spawn(process.execPath, [BIN, 'view', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const ready = new Promise<{ url: string; port: number; token: string | null; slides: { name: string }[] }>(
    (resolve, reject) => {
      child.stdout.on('data', (d) => {
        stdout += d;
        if (stdout.includes('\n')) resolve(JSON.parse(stdout.split('\n')[0]));
      });
      child.on('exit', (code) => reject(new Error(`tessera view exited with ${code}: ${stderr}`)));
    },
  );
  return { child, ready, exited, stderr: () => stderr };
}

function get(port: number, path: string): Promise<{ status: number; type?: string; body: string }> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, type: res.headers['content-type'], body }));
    })
      .on('error', reject)
      .end();
  });
}

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-view-'));
});
afterAll(async () => rm(root, { recursive: true, force: true }));

describe('tessera view', () => {
  it('serves a slide on 127.0.0.1, prints its URL, and stops on SIGTERM with exit code 0', async () => {
    const view = startView([CMU]);
    const info = await view.ready;
    expect(info.url).toBe(`http://127.0.0.1:${info.port}/`);
    expect(info.token).toBeNull();
    expect(info.slides.map((s) => s.name)).toEqual(['CMU-1-Small-Region.svs']);
    const list = JSON.parse((await get(info.port, '/api/slides')).body);
    expect(list.slides[0]).toMatchObject({ width: 2220, height: 2967, layers: { labels: null, live: null } });
    const tile = await get(info.port, '/slides/0/image_files/12/0_0.jpeg');
    expect([tile.status, tile.type]).toEqual([200, 'image/jpeg']);
    const page = await get(info.port, '/');
    expect(page.body).toContain('<title>Tessera viewer</title>');
    view.child.kill('SIGTERM');
    expect(await view.exited).toBe(0);
    expect(view.stderr()).toMatch(/tessera view: 1 slide\(s\) at http:\/\/127\.0\.0\.1:\d+\/; Ctrl-C stops it/);
  });

  it('with --host requires the random token it prints in the URL', async () => {
    const view = startView([CMU, '--host', '127.0.0.1']);
    const info = await view.ready;
    expect(info.token).toMatch(/^[A-Za-z0-9_-]{24}$/);
    expect(info.url).toBe(`http://127.0.0.1:${info.port}/?token=${info.token}`);
    expect((await get(info.port, '/api/slides')).status).toBe(403);
    expect((await get(info.port, '/')).status).toBe(403);
    expect((await get(info.port, `/api/slides?token=${info.token}`)).status).toBe(200);
    view.child.kill('SIGINT');
    expect(await view.exited).toBe(0);
  });

  it('fails with exit code 4 naming a missing slide, and a folder without its label map', () => {
    const missing = tessera(['view', join(root, 'nope.svs')]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/Slide ".*nope\.svs" not found/);
    const empty = tessera(['view', CMU, '--predictions', root]);
    expect(empty.code).toBe(4);
    expect(empty.stderr).toMatch(
      /No label map of "CMU-1-Small-Region\.svs" in the predictions folder ".*": expected CMU-1-Small-Region_labels\.tif/,
    );
    expect(empty.stderr).toMatch(/hint: Predict the slide first: tessera predict --model <model>/);
  });

  it('fails with exit code 2 on a port out of range', () => {
    const bad = tessera(['view', CMU, '--port', '70000']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Expected --port to be an integer between 0 and 65535 but received 70000/);
  });

  it('the slide report names the command that opens the viewer, quoting paths as the shell needs', () => {
    expect(viewerCommandLine('/data/CMU-1.svs', 'out')).toBe('tessera view /data/CMU-1.svs --predictions out');
    expect(viewerCommandLine("/my slides/it's.svs", 'out dir')).toBe(
      "tessera view '/my slides/it'\\''s.svs' --predictions 'out dir'",
    );
  });
});
