import { request } from 'node:http';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readManifest } from '@tessera/core';
import { createOnnxPredictor } from '@tessera/onnx';
import { openSlide, readRegion, type SlideInfo } from '@tessera/tiler';
import { CMU, OME, predictionsFixture, type Fixture } from '../test/fixtures.js';
import { deepZoom, startViewer, tileRect, ViewerPredictionsError, type ViewerServer } from './index.js';

/** A raw HTTP GET (the path is sent as written: no client-side normalisation of `..`). */
function get(
  server: { port: number },
  path: string,
  headers: Record<string, string> = {},
  method = 'GET',
  body?: string,
): Promise<{ status: number; body: Buffer; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: server.port, path, method, headers: { Host: `127.0.0.1:${server.port}`, ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks), headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const json = (body: Buffer) => JSON.parse(body.toString('utf8'));

async function decode(png: Buffer) {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: info.channels };
}

/** The first full-resolution tile (column, row) whose label map has both nuclei and background, and its labels. */
async function mixedTile() {
  const dz = deepZoom(2220, 2967);
  for (let row = 1; row < 11; row++) {
    for (let column = 1; column < 8; column++) {
      const rect = tileRect(dz, 12, column, row);
      const values = await readRegion(labels, rect, { channels: 1 });
      const counts = [0, 0, 0];
      for (const v of values.data) counts[v]++;
      if (counts[0] > 1000 && counts[1] > 1000) return { column, row, rect, values };
    }
  }
  throw new Error('no tile with nuclei and background');
}

let fixture: Fixture;
let viewer: ViewerServer;
let slide: SlideInfo;
let labels: SlideInfo;
const labelsPath = () => join(fixture.predictions, 'CMU-1-Small-Region_labels.tif');

beforeAll(async () => {
  fixture = await predictionsFixture();
  viewer = await startViewer({ slide: CMU, predictions: fixture.predictions });
  slide = await openSlide(CMU);
  labels = await openSlide(labelsPath());
}, 600_000);
afterAll(async () => {
  await viewer?.close();
});

describe('the slide list', () => {
  it('lists the slide first and the other slide of the predictions folder, with classes and areas', async () => {
    expect(viewer.slides.map((s) => s.name)).toEqual(['CMU-1-Small-Region.svs', 'OS-1-detail.ome.tif']);
    expect(viewer.url).toBe(`http://127.0.0.1:${viewer.port}/`);
    expect(viewer.token).toBeNull();
    const list = json((await get(viewer, '/api/slides')).body);
    const [cmu] = list.slides;
    expect([cmu.width, cmu.height, cmu.mpp.x]).toEqual([2220, 2967, 0.499]);
    expect(cmu.deepZoom).toMatchObject({ maxLevel: 12, tileSize: 254, overlap: 1 });
    expect(cmu.classes.map((c: { name: string; background: boolean }) => [c.name, c.background])).toEqual([
      ['background', true],
      ['nucleus', false],
      ['stroma', false],
    ]);
    expect(cmu.classesFrom).toMatch(/the model of the predictions/);
    const areas = JSON.parse(await readFile(join(fixture.predictions, 'CMU-1-Small-Region_areas.json'), 'utf8'));
    const legend = cmu.legend as { name: string; pixels: number; areaUm2: number; tissueFraction: number | null }[];
    expect(legend.map((r) => r.pixels)).toEqual(areas.classes.map((c: { pixels: number }) => c.pixels));
    const tissue = areas.classes[1].pixels + areas.classes[2].pixels;
    expect(legend[1].tissueFraction).toBeCloseTo(areas.classes[1].pixels / tissue, 12);
    expect(legend[0].tissueFraction).toBeNull();
    expect(legend[2].areaUm2).toBeCloseTo(areas.classes[2].pixels * 0.499 * 0.499, 0);
    expect(cmu.layers.probabilities).toEqual(['background', 'nucleus', 'stroma']);
    expect(cmu.layers.outlines.path).toMatch(/CMU-1-Small-Region_polygons\.geojson$/);
    expect(list.slides[1].path).toBe(OME);
  });
});

describe('Deep Zoom tiles', () => {
  it('serves full-resolution slide tiles with the slide pixels (JPEG within a few grey levels)', async () => {
    const dz = deepZoom(2220, 2967);
    const rect = tileRect(dz, 12, 3, 4);
    expect([rect.x, rect.y, rect.width, rect.height]).toEqual([3 * 254 - 1, 4 * 254 - 1, 256, 256]);
    const res = await get(viewer, '/slides/0/image_files/12/3_4.jpeg');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('image/jpeg');
    const tile = await decode(res.body);
    expect([tile.width, tile.height]).toEqual([256, 256]);
    const ref = await readRegion(slide, { x: rect.x, y: rect.y, width: 256, height: 256 });
    let sum = 0;
    for (let i = 0; i < ref.data.length; i++) sum += Math.abs(ref.data[i] - tile.data[i]);
    expect(sum / ref.data.length).toBeLessThan(4);
  });

  it('serves reduced levels resampled from the slide, and the last tile of a level clipped to its size', async () => {
    // Level 11 is half resolution: 1110 x 1484 px, 5 x 6 tiles; the last column is 1110 - 4 * 254 + 1 = 95 wide.
    const res = await get(viewer, '/slides/0/image_files/11/4_5.jpeg');
    const tile = await decode(res.body);
    expect([tile.width, tile.height]).toEqual([95, 1484 - 5 * 254 + 1]);
    const ref = await readRegion(slide, { x: 4 * 254 - 1, y: 5 * 254 - 1, width: 95, height: 215 }, { scale: 0.5 });
    let sum = 0;
    for (let i = 0; i < ref.data.length; i++) sum += Math.abs(ref.data[i] - tile.data[i]);
    expect(sum / ref.data.length).toBeLessThan(4);
    // Level 8 (139 x 186) is the whole slide in one tile.
    const overview = await decode((await get(viewer, '/slides/0/image_files/8/0_0.jpeg')).body);
    expect([overview.width, overview.height]).toEqual([139, 186]);
  });

  it('colours label tiles by class, leaves the background clear, and hides the classes left out of the mask', async () => {
    const { column, row, values } = await mixedTile();
    const colours = [
      [0, 0, 0, 0],
      [255, 0, 0, 255],
      [0, 255, 0, 255],
    ];
    const all = await decode((await get(viewer, `/slides/0/labels_files/12/${column}_${row}.png`)).body);
    expect([all.width, all.height, all.channels]).toEqual([256, 256, 4]);
    for (let i = 0; i < values.data.length; i++) {
      expect(Array.from(all.data.subarray(i * 4, i * 4 + 4))).toEqual(colours[values.data[i]]);
    }
    // classes=2: only nucleus (bit 1); classes=0: nothing, a 1 x 1 transparent tile.
    const nuclei = await decode((await get(viewer, `/slides/0/labels_files/12/${column}_${row}.png?classes=2`)).body);
    expect([nuclei.width, nuclei.height]).toEqual([256, 256]);
    for (let i = 0; i < values.data.length; i++) {
      expect(nuclei.data[i * 4 + 3]).toBe(values.data[i] === 1 ? 255 : 0);
    }
    const none = await decode((await get(viewer, `/slides/0/labels_files/12/${column}_${row}.png?classes=0`)).body);
    expect([none.width, none.height, ...none.data]).toEqual([1, 1, 0, 0, 0, 0]);
  });

  it('takes the most frequent class of the label pyramid, never an average, in reduced label tiles', async () => {
    const tile = await decode((await get(viewer, '/slides/0/labels_files/10/1_1.png')).body);
    const allowed = new Set(['0,0,0,0', '255,0,0,255', '0,255,0,255']);
    for (let i = 0; i < tile.width * tile.height; i++) {
      expect(allowed.has(Array.from(tile.data.subarray(i * 4, i * 4 + 4)).join(','))).toBe(true);
    }
    // Level 10 is a quarter: its pixel (300, 300) lies over level-0 pixel (1202, 1202) of the label map's level 2.
    const level2 = await readRegion(labels, { x: 300, y: 300, width: 1, height: 1 }, { level: 2, channels: 1 });
    const at = ((300 - 253) * tile.width + (300 - 253)) * 4;
    expect(tile.data[at + 3] === 0 ? 0 : tile.data[at] === 255 ? 1 : 2).toBe(level2.data[0]);
  });

  it('draws GeoJSON outlines at full resolution and nothing below half resolution', async () => {
    const { column, row, rect } = await mixedTile();
    const full = await decode((await get(viewer, `/slides/0/outlines_files/12/${column}_${row}.png`)).body);
    expect([full.width, full.height]).toEqual([256, 256]);
    // Each outline pixel lies on a region's edge: the label map changes within the 2 x 2 pixels at its top left.
    const around = await readRegion(labels, { x: rect.x - 1, y: rect.y - 1, width: 257, height: 257 }, { channels: 1 });
    const at = (x: number, y: number) => around.data[(y + 1) * 257 + x + 1];
    let drawn = 0;
    let onEdge = 0;
    for (let y = 0; y < 256; y++) {
      for (let x = 0; x < 256; x++) {
        const i = (y * 256 + x) * 4;
        if (!full.data[i + 3]) continue;
        drawn++;
        const values = new Set([at(x, y), at(x - 1, y), at(x, y - 1), at(x - 1, y - 1)]);
        const colour = full.data[i] === 255 ? 1 : 2;
        if (values.size > 1 && values.has(colour)) onEdge++;
      }
    }
    expect(drawn).toBeGreaterThan(500);
    expect(onEdge / drawn).toBeGreaterThan(0.99);
    const far = await decode((await get(viewer, '/slides/0/outlines_files/9/0_0.png')).body);
    expect([far.width, far.height, far.data[3]]).toEqual([1, 1, 0]);
  });

  it('answers a tile it made before from the cache', async () => {
    const before = viewer.stats();
    const a = await get(viewer, '/slides/0/image_files/12/3_4.jpeg');
    const after = viewer.stats();
    expect(after.hits).toBe(before.hits + 1);
    expect(after.misses).toBe(before.misses);
    expect(a.status).toBe(200);
  });

  it('tells the pixel under the cursor: slide colour, class and probabilities of the maps', async () => {
    const { rect, values } = await mixedTile();
    const i = values.data.indexOf(1);
    const x = rect.x + (i % rect.width);
    const y = rect.y + Math.floor(i / rect.width);
    const info = json((await get(viewer, `/api/slides/0/pixel?x=${x}&y=${y}`)).body);
    expect(info.label).toEqual({ value: 1, name: 'nucleus', index: 1 });
    expect(info.rgb).toEqual(Array.from((await readRegion(slide, { x, y, width: 1, height: 1 })).data));
    const probability = await openSlide(join(fixture.predictions, 'CMU-1-Small-Region_prob_nucleus.tif'));
    const p = (await readRegion(probability, { x, y, width: 1, height: 1 }, { channels: 1 })).data[0] / 255;
    expect(info.probabilities.map((q: { name: string }) => q.name)).toEqual(['background', 'nucleus', 'stroma']);
    expect(info.probabilities[1].p).toBeCloseTo(p, 6);
    // The label is the most probable class (8-bit maps may tie).
    expect(info.probabilities[1].p).toBe(Math.max(...info.probabilities.map((q: { p: number }) => q.p)));
  });
});

describe('predictions of another slide', () => {
  it("refuses a label map whose aspect ratio is not the slide's, naming both sizes", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tessera-viewer-mismatch-'));
    try {
      await copyFile(join(fixture.predictions, 'OS-1-detail_labels.tif'), join(dir, 'CMU-1-Small-Region_labels.tif'));
      const error = await startViewer({ slide: CMU, predictions: dir }).catch((e) => e);
      expect(error).toBeInstanceOf(ViewerPredictionsError);
      expect(error.exitCode).toBe(5);
      expect(error.message).toMatch(
        /Label map ".*CMU-1-Small-Region_labels\.tif" is 1101x1101 but slide ".*CMU-1-Small-Region\.svs" is 2220x2967: expected a label map of the slide's aspect ratio\./,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('bad requests', () => {
  it.each([
    [
      'level past the last',
      '/slides/0/image_files/13/0_0.jpeg',
      /level to be an integer between 0 and 12 but received "13"/,
    ],
    ['negative level', '/slides/0/image_files/-1/0_0.jpeg', /level to be an integer between 0 and 12/],
    [
      'column past the last',
      '/slides/0/image_files/12/9_0.jpeg',
      /column to be an integer between 0 and 8 but received "9"/,
    ],
    ['row past the last', '/slides/0/image_files/11/0_6.jpeg', /row to be an integer between 0 and 5/],
    ['not a number', '/slides/0/image_files/12/a_b.jpeg', /column to be an integer/],
    ['exponent', '/slides/0/image_files/1e1/0_0.jpeg', /level to be an integer/],
    ['huge', '/slides/0/image_files/12/99999999999_0.jpeg', /column to be an integer/],
    ['three parts', '/slides/0/image_files/12/0_0_0.jpeg', /tile name <column>_<row>\.jpeg/],
    ['wrong format', '/slides/0/image_files/12/0_0.png', /tile name <column>_<row>\.jpeg/],
    ['bad class mask', '/slides/0/labels_files/12/0_0.png?classes=xyz', /hexadecimal bit mask/],
    ['pixel outside', '/api/slides/0/pixel?x=2220&y=0', /x to be an integer between 0 and 2219/],
    ['pixel missing', '/api/slides/0/pixel?x=5', /y to be an integer between 0 and 2966/],
    ['bad encoding', '/slides/0/image_files/%E0%A4%A/0_0.jpeg', /Malformed percent-encoding/],
  ])('%s gets 400 with the expected range', async (_name, path, message) => {
    const res = await get(viewer, path);
    expect(res.status).toBe(400);
    expect(json(res.body).error).toMatch(message);
  });

  it('keeps serving after bad requests', async () => {
    expect((await get(viewer, '/slides/0/image_files/12/0_0.jpeg')).status).toBe(200);
  });

  it('refuses a live prediction where no --model was given', async () => {
    const res = await get(viewer, '/api/slides/0/predict', {}, 'POST', '{"x":0,"y":0,"width":10,"height":10}');
    expect(res.status).toBe(404);
    expect(json(res.body).error).toMatch(/No --model/);
  });
});

describe('path traversal', () => {
  const secrets = ['root:', '"name": "@tessera/viewer"', '"name": "tessera-workspace"', 'ImageDescription'];
  it.each([
    '/../../../../etc/passwd',
    '/static/../package.json',
    '/static/%2e%2e/%2e%2e/package.json',
    '/static/%2e%2e%2f%2e%2e%2fpackage.json',
    '/static/..%2fpackage.json',
    '/static/..%5c..%5cpackage.json',
    '/vendor/openseadragon/images/..%2f..%2f..%2fpackage.json',
    '/vendor/openseadragon/%2e%2e/package.json',
    '/slides/0/image_files/12/..%2f..%2f..%2f..%2fetc%2fpasswd',
    '/slides/..%2f0/image.dzi',
    '/slides/%2Fetc%2Fpasswd/image.dzi',
    '//etc/passwd',
    '/etc/passwd',
    `/${encodeURIComponent(CMU)}`,
    `/slides/${encodeURIComponent(CMU)}/image_files/12/0_0.jpeg`,
    '/slides/0/report.html/../../../etc/passwd',
    '/api/slides/0/../../../../etc/passwd',
  ])('%s gets 404 and no file content', async (path) => {
    const res = await get(viewer, path);
    expect(res.status).toBe(404);
    const text = res.body.toString('latin1');
    for (const s of secrets) expect(text).not.toContain(s);
  });

  it('serves OpenSeadragon from the npm package, not a CDN', async () => {
    const res = await get(viewer, '/vendor/openseadragon/openseadragon.min.js');
    expect(res.status).toBe(200);
    expect(res.body.toString('utf8')).toMatch(/OpenSeadragon/);
    const page = (await get(viewer, '/')).body.toString('utf8');
    expect(page).toContain('/vendor/openseadragon/openseadragon.min.js');
    expect(page).not.toMatch(/https?:\/\//);
  });

  it('refuses requests for another host name (DNS rebinding) when no token is set', async () => {
    const res = await get(viewer, '/api/slides', { Host: 'attacker.example:80' });
    expect(res.status).toBe(403);
  });
});

describe('with --host: the access token', () => {
  let guarded: ViewerServer;
  beforeAll(async () => {
    guarded = await startViewer({ slide: CMU, predictions: fixture.predictions, host: '127.0.0.1' });
  });
  afterAll(async () => {
    await guarded?.close();
  });

  it('puts a random token in the URL', () => {
    expect(guarded.token).toMatch(/^[A-Za-z0-9_-]{24}$/);
    expect(guarded.url).toBe(`http://127.0.0.1:${guarded.port}/?token=${guarded.token}`);
  });

  it.each([
    '/',
    '/index.html',
    '/static/viewer.js',
    '/vendor/openseadragon/openseadragon.min.js',
    '/api/slides',
    '/api/slides/0/pixel?x=1&y=1',
    '/slides/0/image_files/12/0_0.jpeg',
    '/slides/0/labels_files/12/0_0.png',
    '/slides/0/image_files/99/0_0.jpeg',
    '/no/such/path',
    '/../../etc/passwd',
  ])('refuses %s without the token, and with a wrong one', async (path) => {
    expect((await get(guarded, path)).status).toBe(403);
    const sep = path.includes('?') ? '&' : '?';
    expect((await get(guarded, `${path}${sep}token=${'x'.repeat(24)}`)).status).toBe(403);
    expect((await get(guarded, path, { Cookie: 'tessera_view_token=nope' })).status).toBe(403);
  });

  it('answers with the token in the URL (and sets a cookie), or with the cookie alone', async () => {
    const first = await get(guarded, `/?token=${guarded.token}`);
    expect(first.status).toBe(200);
    const cookie = String(first.headers['set-cookie']);
    expect(cookie).toMatch(/^tessera_view_token=[A-Za-z0-9_-]+; HttpOnly; SameSite=Strict; Path=\//);
    const tile = await get(guarded, '/slides/0/image_files/12/0_0.jpeg', { Cookie: cookie.split(';')[0] });
    expect(tile.status).toBe(200);
    expect(tile.headers['content-type']).toBe('image/jpeg');
    const api = await get(guarded, '/api/slides', { Authorization: `Bearer ${guarded.token}` });
    expect(api.status).toBe(200);
  });
});

describe('--model: the part in view predicted on demand', () => {
  let live: ViewerServer;
  beforeAll(async () => {
    const manifest = await readManifest(fixture.model);
    const predictor = await createOnnxPredictor(new Uint8Array(await readFile(fixture.onnx)), { threads: 2 });
    live = await startViewer({ slide: CMU, model: { predictor, manifest }, live: { maxBlocks: 4 } });
  });
  afterAll(async () => {
    await live?.close();
  });

  async function waitIdle() {
    for (let i = 0; i < 600; i++) {
      const status = json((await get(live, '/api/slides/0/live')).body);
      if (status.pending === 0) return status;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('live prediction did not finish');
  }

  it('refuses a view of more blocks than the limit', async () => {
    const res = await get(live, '/api/slides/0/predict', {}, 'POST', '{"x":0,"y":0,"width":2220,"height":2967}');
    expect(json(res.body)).toMatchObject({ status: 'too-large', blocks: 30, limit: 4 });
  });

  it('predicts the blocks in view with receptive-field margins: the labels of a whole-slide prediction', async () => {
    // Block (2, 2) of 512 px: level-0 pixels 1024..1535, all tissue (predicted, not skipped, in the fixture).
    const body = JSON.stringify({ x: 1100, y: 1100, width: 300, height: 300 });
    const answer = json((await get(live, '/api/slides/0/predict', {}, 'POST', body)).body);
    expect(answer).toMatchObject({ status: 'queued', blocks: 1, missing: 1 });
    const status = await waitIdle();
    expect(status).toMatchObject({ predicted: 1, error: null });
    expect(status.counts.reduce((a: number, c: { pixels: number }) => a + c.pixels, 0)).toBe(512 * 512);
    // Tile (12, 4, 4) covers level-0 pixels 1015..1270: inside block (2, 2) from 1024 on.
    const rect = tileRect(deepZoom(2220, 2967), 12, 4, 4);
    const tile = await decode((await get(live, '/slides/0/live_files/12/4_4.png?g=1')).body);
    const truth = await readRegion(labels, rect, { channels: 1 });
    let same = 0;
    let compared = 0;
    for (let y = 1024 - rect.y; y < rect.height; y++) {
      for (let x = 1024 - rect.x; x < rect.width; x++) {
        const i = y * rect.width + x;
        const a = tile.data[i * 4 + 3] === 0 ? 0 : tile.data[i * 4] === 255 ? 1 : 2;
        compared++;
        if (a === truth.data[i]) same++;
      }
    }
    expect(compared).toBe((256 - 9) * (256 - 9));
    expect(same / compared).toBeGreaterThan(0.995);
    // Left of x 1024 nothing is predicted yet: transparent.
    expect(tile.data[(20 * rect.width + 2) * 4 + 3]).toBe(0);
    const info = json((await get(live, '/api/slides/0/pixel?x=1200&y=1200')).body);
    expect(info.live.probabilities.map((q: { p: number }) => q.p).reduce((a: number, b: number) => a + b)).toBeCloseTo(
      1,
      1,
    );
  });

  it('answers a view it predicted before at once', async () => {
    const body = JSON.stringify({ x: 1030, y: 1030, width: 100, height: 100 });
    expect(json((await get(live, '/api/slides/0/predict', {}, 'POST', body)).body)).toMatchObject({ status: 'done' });
  });
});
