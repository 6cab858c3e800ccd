/**
 * The viewer in a real browser: Debian's Chromium (`/usr/bin/chromium`, or `CHROMIUM_PATH`) driven by puppeteer-core
 * against the viewer on the shared CMU SVS and its predictions. Skipped, visibly, where Chromium is not installed
 * (`apt-get install chromium`). Screenshots are written to `<tmp>/tessera-viewer-screenshots/`.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type HTTPResponse, type Page } from 'puppeteer-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readManifest } from '@tessera/core';
import { createOnnxPredictor } from '@tessera/onnx';
import { openSlide, readRegion, type SlideInfo } from '@tessera/tiler';
import { CMU, predictionsFixture, type Fixture } from '../test/fixtures.js';
import { deepZoom, levelTiles, startViewer, tileRect, type ViewerServer } from './index.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
const SHOTS = join(tmpdir(), 'tessera-viewer-screenshots');

let fixture: Fixture;
let viewer: ViewerServer;
let browser: Browser;
let page: Page;
let slide: SlideInfo;
let labels: SlideInfo;
/** Tile responses of the page: layer, level, column, row and the response. */
let tiles: { slide: string; layer: string; level: number; column: number; row: number; response: HTTPResponse }[] = [];

async function launch(): Promise<Browser> {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--force-device-scale-factor=1'],
  });
}

async function open(url: string): Promise<Page> {
  const p = await browser.newPage();
  await p.setViewport({ width: 1400, height: 900 });
  p.on('response', (response) => {
    const m = /\/slides\/(\d+)\/(\w+)_files\/(\d+)\/(\d+)_(\d+)\./.exec(response.url());
    if (m) tiles.push({ slide: m[1], layer: m[2], level: +m[3], column: +m[4], row: +m[5], response });
  });
  await p.goto(url, { waitUntil: 'load' });
  await settle(p);
  return p;
}

/** Waits until every layer's tiles in view are drawn and no layer is being replaced. */
async function settle(p: Page): Promise<void> {
  await new Promise((r) => setTimeout(r, 300));
  await p.waitForFunction(() => (window as any).tessera?.loaded(), { timeout: 60_000, polling: 100 });
}

/** A screenshot, saved under `name`, and its pixels. */
async function shot(p: Page, name: string) {
  await mkdir(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  const png = await p.screenshot({ path });
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  return {
    path,
    pixel: (x: number, y: number) => Array.from(data.subarray((y * info.width + x) * info.channels).subarray(0, 3)),
  };
}

/** Centres the view on level-0 pixel (x, y) at `zoom` screen pixels per slide pixel. */
async function zoomTo(p: Page, x: number, y: number, zoom: number): Promise<void> {
  await p.evaluate(
    ({ x, y, zoom }) => {
      const v = (window as any).tessera.viewer;
      const item = v.world.getItemAt(0);
      v.viewport.zoomTo(item.imageToViewportZoom(zoom), null, true);
      v.viewport.panTo(item.imageToViewportCoordinates(x, y), true);
    },
    { x, y, zoom },
  );
  await settle(p);
}

/** Where level-0 point (x, y) is on the page, in CSS pixels. */
async function onPage(p: Page, x: number, y: number): Promise<[number, number]> {
  return p.evaluate(
    ({ x, y }) => {
      const v = (window as any).tessera.viewer;
      const point = v.world.getItemAt(0).imageToViewerElementCoordinates(new (window as any).OpenSeadragon.Point(x, y));
      const box = v.element.getBoundingClientRect();
      return [Math.round(box.left + point.x), Math.round(box.top + point.y)] as [number, number];
    },
    { x, y },
  );
}

const near = (a: number[], b: number[], tolerance: number) => a.every((v, i) => Math.abs(v - b[i]) <= tolerance);

/** The first nucleus pixel of the label map whose 5 x 5 neighbourhood is all nucleus (the untrained model is noisy). */
let found: { x: number; y: number } | undefined;
async function nucleusPixel(): Promise<{ x: number; y: number }> {
  if (found) return found;
  const x0 = 0;
  const y0 = 0;
  const region = await readRegion(labels, { x: 0, y: 0, width: 2220, height: 2967 }, { channels: 1 });
  for (let y = 2; y < region.height - 2; y++) {
    for (let x = 2; x < region.width - 2; x++) {
      let all = true;
      for (let dy = -2; dy <= 2 && all; dy++) {
        for (let dx = -2; dx <= 2 && all; dx++) all = region.data[(y + dy) * region.width + x + dx] === 1;
      }
      if (all) return (found = { x: x0 + x, y: y0 + y });
    }
  }
  throw new Error('no 5 x 5 block of nucleus in the label map');
}

beforeAll(async () => {
  if (!hasChromium) return;
  fixture = await predictionsFixture();
  viewer = await startViewer({ slide: CMU, predictions: fixture.predictions });
  slide = await openSlide(CMU);
  labels = await openSlide(join(fixture.predictions, 'CMU-1-Small-Region_labels.tif'));
  browser = await launch();
  page = await open(viewer.url);
}, 600_000);
afterAll(async () => {
  await browser?.close();
  await viewer?.close();
});

describe('the viewer in Chromium', () => {
  it.skipIf(!hasChromium)(
    'loads: the slide list, the legend with areas, and tiles of the level that fits',
    async () => {
      const shown = await shot(page, '1-home');
      const names = await page.$$eval('#slides li', (lis) =>
        lis.map((li) => [li.firstChild!.textContent, li.className]),
      );
      expect(names).toEqual([
        ['CMU-1-Small-Region.svs', 'current'],
        ['OS-1-detail.ome.tif', ''],
      ]);
      const areas = JSON.parse(await readFile(join(fixture.predictions, 'CMU-1-Small-Region_areas.json'), 'utf8'));
      const legend = await page.$$eval('#legend tbody tr', (rows) =>
        rows.map((r) => Array.from(r.querySelectorAll('td'), (td) => td.textContent)),
      );
      expect(legend.map((r) => r[1])).toEqual(['background', 'nucleus', 'stroma']);
      expect(legend[1][2]).toBe(areas.classes[1].pixels.toLocaleString('en-US'));
      const tissue = areas.classes[1].pixels + areas.classes[2].pixels;
      expect(legend[1][4]).toBe(`${((areas.classes[1].pixels / tissue) * 100).toFixed(1)}%`);
      // The window shows the slide at about 0.3 screen pixels per slide pixel: Deep Zoom level 11 (half resolution)
      // or 10 is enough, and full resolution (12) must not be fetched.
      const zoom = await page.evaluate(() => {
        const v = (window as any).tessera.viewer;
        return v.world.getItemAt(0).viewportToImageZoom(v.viewport.getZoom(true));
      });
      expect(zoom).toBeGreaterThan(0.25);
      expect(zoom).toBeLessThan(0.35);
      const wanted = 12 - Math.floor(Math.log2(1 / zoom));
      const images = tiles.filter((t) => t.layer === 'image');
      const top = Math.max(...images.map((t) => t.level));
      expect([wanted - 1, wanted]).toContain(top);
      expect(images.every((t) => t.response.status() === 200)).toBe(true);
      // Every tile of that level in view came, and the label overlay's too.
      const { columns, rows } = levelTiles(deepZoom(2220, 2967), top);
      const got = new Set(images.filter((t) => t.level === top).map((t) => `${t.column}_${t.row}`));
      expect(got.size).toBe(columns * rows);
      const overlay = tiles.filter((t) => t.layer === 'labels' && t.level === top);
      expect(overlay.length).toBe(columns * rows);
      // Glass at the top left corner stays untinted: the background class is clear.
      const [gx, gy] = await onPage(page, 60, 60);
      const glass = shown.pixel(gx, gy);
      expect(glass.every((v) => v > 200)).toBe(true);
    },
  );

  it.skipIf(!hasChromium)(
    'shows a nucleus pixel in the nucleus colour, and the slide once nuclei are hidden',
    async () => {
      const { x, y } = await nucleusPixel();
      await page.$eval('#opacity', (el) => {
        (el as HTMLInputElement).value = '100';
        el.dispatchEvent(new Event('input'));
      });
      tiles = [];
      await zoomTo(page, x + 0.5, y + 0.5, 4);
      const [px, py] = await onPage(page, x + 0.5, y + 0.5);
      const red = await shot(page, '2-nucleus-shown');
      expect(red.pixel(px, py)).toEqual([255, 0, 0]);
      // Full resolution now: tiles of level 12, with the slide's pixels.
      const full = tiles.filter((t) => t.layer === 'image' && t.level === 12);
      expect(full.length).toBeGreaterThan(0);
      const t = full[0];
      const rect = tileRect(deepZoom(2220, 2967), 12, t.column, t.row);
      const { data } = await sharp(await t.response.buffer())
        .raw()
        .toBuffer({ resolveWithObject: true });
      const ref = await readRegion(slide, rect);
      let sum = 0;
      for (let i = 0; i < ref.data.length; i++) sum += Math.abs(ref.data[i] - data[i]);
      expect(sum / ref.data.length).toBeLessThan(4);
      // Hide nuclei with their check box: the slide shows through.
      await page.click('#legend input[data-index="1"]');
      await settle(page);
      const hidden = await shot(page, '3-nucleus-hidden');
      const rgb = Array.from((await readRegion(slide, { x, y, width: 1, height: 1 })).data);
      expect(near(hidden.pixel(px, py), rgb, 12)).toBe(true);
      expect(near(hidden.pixel(px, py), [255, 0, 0], 60)).toBe(false);
      await page.click('#legend input[data-index="1"]');
      await settle(page);
      expect((await shot(page, '4-nucleus-again')).pixel(px, py)).toEqual([255, 0, 0]);
    },
  );

  it.skipIf(!hasChromium)(
    'draws a µm scale bar from the slide µm/px, and tells the pixel under the cursor',
    async () => {
      // At 4 screen pixels per slide pixel of 0.499 µm, 120 px hold 15 µm: the bar shows 10 µm on 80.2 px.
      const bar = await page.$eval('#scalebar-bar', (el) => el.getBoundingClientRect().width);
      expect(bar).toBeCloseTo(10 / (0.499 / 4), 0);
      expect(await page.$eval('#scalebar-label', (el) => el.textContent)).toBe('10 µm');
      const { x, y } = await nucleusPixel();
      const [px, py] = await onPage(page, x + 0.5, y + 0.5);
      await page.mouse.move(px, py);
      await page.waitForFunction(
        (x: string) => document.getElementById('cursor')!.textContent!.includes(x),
        { timeout: 10_000 },
        `${x.toLocaleString('en-US')}, ${y.toLocaleString('en-US')}`,
      );
      const text = await page.$eval('#cursor', (el) => el.textContent);
      expect(text).toContain('nucleus (value 1)');
      expect(text).toMatch(/probability: background 0\.\d\d, nucleus 0\.\d\d, stroma 0\.\d\d/);
    },
  );

  it.skipIf(!hasChromium)('keyboard: o hides the overlay, n and p change slides', async () => {
    const { x, y } = await nucleusPixel();
    const [px, py] = await onPage(page, x + 0.5, y + 0.5);
    await page.keyboard.press('o');
    await settle(page);
    const off = await shot(page, '5-overlay-off');
    expect(near(off.pixel(px, py), [255, 0, 0], 60)).toBe(false);
    await page.keyboard.press('o');
    await settle(page);
    expect((await shot(page, '6-overlay-on')).pixel(px, py)).toEqual([255, 0, 0]);
    tiles = [];
    await page.keyboard.press('n');
    await settle(page);
    expect(await page.$eval('#slides li.current', (li) => li.firstChild!.textContent)).toBe('OS-1-detail.ome.tif');
    expect(tiles.some((t) => t.slide === '1' && t.layer === 'image')).toBe(true);
    expect(tiles.some((t) => t.slide === '1' && t.layer === 'labels')).toBe(true);
    await shot(page, '7-second-slide');
    await page.keyboard.press('p');
    await settle(page);
    expect(await page.$eval('#slides li.current', (li) => li.firstChild!.textContent)).toBe('CMU-1-Small-Region.svs');
  });
});

describe('--model without predictions in Chromium', () => {
  let live: ViewerServer;
  let livePage: Page;
  beforeAll(async () => {
    if (!hasChromium) return;
    const manifest = await readManifest(fixture.model);
    const predictor = await createOnnxPredictor(new Uint8Array(await readFile(fixture.onnx)), { threads: 2 });
    live = await startViewer({ slide: CMU, model: { predictor, manifest } });
    livePage = await open(live.url);
  }, 120_000);
  afterAll(async () => {
    await livePage?.close();
    await live?.close();
  });

  it.skipIf(!hasChromium)('predicts the part in view on demand and draws it in the class colours', async () => {
    // Zoomed out, the whole slide is more than the 24 blocks one view may ask for.
    await livePage.waitForFunction(() =>
      /Zoom in to predict/.test(document.getElementById('live-status')!.textContent!),
    );
    await shot(livePage, '8-live-zoomed-out');
    await livePage.$eval('#opacity', (el) => {
      (el as HTMLInputElement).value = '100';
      el.dispatchEvent(new Event('input'));
    });
    await zoomTo(livePage, 1280, 1280, 2);
    await livePage.waitForFunction(
      () => /block\(s\) predicted/.test(document.getElementById('live-status')!.textContent!),
      { timeout: 120_000 },
    );
    await settle(livePage);
    const drawn = await shot(livePage, '9-live-predicted');
    // The pixel API and the drawing agree, pixel by pixel, on a row of the view.
    let checked = 0;
    for (let x = 1180; x < 1380; x += 10) {
      const info = await (await fetch(`${live.url}api/slides/0/pixel?x=${x}&y=1280`)).json();
      expect(info.live).not.toBeNull();
      const [px, py] = await onPage(livePage, x + 0.5, 1280.5);
      const colour = { background: null, nucleus: [255, 0, 0], stroma: [0, 255, 0] }[info.live.name as string];
      if (!colour) continue;
      expect(drawn.pixel(px, py)).toEqual(colour);
      checked++;
    }
    expect(checked).toBeGreaterThan(5);
  });
});
