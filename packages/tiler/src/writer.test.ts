import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pyramidLevels, SlideOutputWriter, VipsFileWriter, vipsHeader } from './writer.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-writer-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function hasTool(name: string): boolean {
  try {
    execFileSync(name, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const classes = [
  { name: 'background', value: 0, color: '#000000' },
  { name: 'tumour', value: 255, color: '#ff0000' },
];

describe('VIPS files', () => {
  it('writes a header libvips reads, with pixels and resolution', async () => {
    expect(vipsHeader(5, 3, 1, 2000).subarray(0, 4)).toEqual(Buffer.from([0xb6, 0xa6, 0xf2, 0x08]));
    const path = join(tmp, 'a.v');
    const file = new VipsFileWriter(path, 5, 3, 1, 2000);
    file.append(Uint8Array.from({ length: 10 }, (_, i) => i));
    file.append(Uint8Array.from({ length: 5 }, (_, i) => 100 + i));
    file.close();
    const { data, info } = await sharp(path).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([5, 3]);
    expect([...data]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 102, 103, 104]);
    expect((await sharp(path).metadata()).density).toBeCloseTo(2000 * 25.4, 0);
    if (hasTool('vipsheader'))
      expect(execFileSync('vipsheader', [path], { encoding: 'utf8' })).toMatch(/5x3 uchar, 1 band/);
  });
});

describe('SlideOutputWriter', () => {
  it('streams bands into a tiled pyramidal TIFF with µm/px, areas and an overlay', async () => {
    const width = 1200;
    const height = 700;
    const writer = new SlideOutputWriter({ dir: tmp, stem: 's', width, height, classes, mpp: { x: 0.5, y: 0.5 } });
    for (let y = 0; y < height; y += 100) {
      const labels = new Uint8Array(100 * width);
      for (let i = 0; i < labels.length; i++) labels[i] = i % width < 300 ? 1 : 0;
      writer.write({
        y,
        x: 0,
        stripe: 0,
        height: 100,
        width,
        labels,
        probabilities: new Float32Array(100 * width * 2),
      });
    }
    const outputs = await writer.finish({
      data: new Uint8Array(120 * 70 * 3).fill(200),
      width: 120,
      height: 70,
      channels: 3,
    });
    const meta = await sharp(outputs.labels).metadata();
    expect([meta.width, meta.height, meta.channels, meta.resolutionUnit]).toEqual([1200, 700, 1, 'cm']);
    expect(meta.density).toBeCloseTo(50800, -1); // 2000 px/mm = 20000 px/cm = 50800 dpi
    expect(meta.pages).toBe(4); // 1200x700, 600x350, 300x175, 150x88
    const pixels = await sharp(outputs.labels).extractChannel(0).raw().toBuffer();
    expect([pixels[0], pixels[299], pixels[300]]).toEqual([255, 255, 0]);
    const areas = JSON.parse(await readFile(outputs.areasJson, 'utf8'));
    expect(areas.classes[1]).toMatchObject({ name: 'tumour', pixels: 300 * 700, areaUm2: 300 * 700 * 0.25 });
    expect(await readFile(outputs.areasCsv, 'utf8')).toContain('tumour,255,210000,0.250000,52500');
    const overlay = await sharp(outputs.overlay).raw().toBuffer();
    expect([overlay[0], overlay[1]]).toEqual([222, 120]); // 0.6 * 200 + 0.4 * (255, 0)
    expect((await readdir(tmp)).filter((n) => n.includes('.tmp-'))).toEqual([]);
    if (hasTool('vipsheader')) {
      expect(execFileSync('vipsheader', ['-f', 'n-pages', outputs.labels], { encoding: 'utf8' }).trim()).toBe('4');
    }
  });

  it("makes the overlay of a 1101 x 1101 map at 1024 x 1024 (libvips's nearest resize of the .v file: SIGSEGV)", async () => {
    // Found by the fuzzer (seed 1, case 826): any slide whose label map and overlay have these sizes crashed predict.
    const dir = await mkdtemp(join(tmp, 'overlay-'));
    const [width, height] = [1101, 1101];
    const writer = new SlideOutputWriter({ dir, stem: 'o', width, height, classes, mpp: null });
    const labels = new Uint8Array(width * height);
    for (let i = 0; i < labels.length; i++) labels[i] = Math.floor(i / width) >= 1000 || i % width >= 1000 ? 1 : 0;
    writer.write({ y: 0, x: 0, stripe: 0, height, width, labels, probabilities: new Float32Array(width * height * 2) });
    const grey = { data: new Uint8Array(1024 * 1024 * 3).fill(200), width: 1024, height: 1024, channels: 3 };
    const outputs = await writer.finish(grey);
    const { data, info } = await sharp(outputs.overlay).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([1024, 1024]);
    const at = (x: number, y: number) => [...data.subarray((y * 1024 + x) * 3, (y * 1024 + x) * 3 + 2)];
    // Output pixel x takes the label under its centre: source column floor((x + 0.5) * 1101 / 1024).
    expect(at(929, 0)).toEqual([200, 200]); // source column 999
    expect(at(930, 0)).toEqual([222, 120]); // source column 1000: tumour
    expect(at(0, 1023)).toEqual([222, 120]); // the last row
  });

  it('leaves the background of an automatic class map (class_0) untinted and out of the polygons', async () => {
    // Old model folders without a background flag: class_0 (value 0) is coloured black and is the background.
    const auto = [
      { name: 'class_0', value: 0, color: '#000000' },
      { name: 'class_1', value: 1, color: '#e6194b' },
    ];
    const dir = await mkdtemp(join(tmp, 'auto-'));
    const [width, height] = [40, 20];
    const writer = new SlideOutputWriter({
      dir,
      stem: 'a',
      width,
      height,
      classes: auto,
      mpp: null,
      geojson: { objectType: 'annotation' },
    });
    const labels = new Uint8Array(width * height);
    for (let i = 0; i < labels.length; i++) labels[i] = i % width < 10 ? 1 : 0; // class_1 on the left quarter
    writer.write({ y: 0, x: 0, stripe: 0, height, width, labels, probabilities: new Float32Array(width * height * 2) });
    const white = { data: new Uint8Array(width * height * 3).fill(255), width, height, channels: 3 };
    const outputs = await writer.finish(white);
    const overlay = await sharp(outputs.overlay).raw().toBuffer();
    const at = (x: number) => [...overlay.subarray(x * 3, x * 3 + 3)];
    expect(at(30)).toEqual([255, 255, 255]); // white glass stays white
    expect(at(0)).toEqual([245, 163, 183]); // 0.6 * 255 + 0.4 * (0xe6, 0x19, 0x4b)
    const features = JSON.parse(await readFile(outputs.polygons!.path, 'utf8')).features;
    expect(features.map((f: { properties: unknown }) => f.properties)).toEqual([
      { objectType: 'annotation', classification: { name: 'class_1', color: [230, 25, 75] } },
    ]);
    expect(outputs.polygons!.classes.map((c) => c.name)).toEqual(['class_1']);
  });

  it('leaves no file behind when aborted', async () => {
    const dir = await mkdtemp(join(tmp, 'abort-'));
    const writer = new SlideOutputWriter({
      dir,
      stem: 'x',
      width: 10,
      height: 10,
      classes,
      mpp: null,
      probabilities: true,
    });
    writer.write({
      y: 0,
      x: 0,
      stripe: 0,
      height: 5,
      width: 10,
      labels: new Uint8Array(50),
      probabilities: new Float32Array(100),
    });
    await writer.abort();
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('label pyramid', () => {
  it('reduces levels by the mode of 2x2 pixels, so every pixel of every level is a class value', async () => {
    // 3 classes with values 0, 128, 255: averaging two neighbours would invent 64, 191...
    const three = [
      { name: 'background', value: 0, color: '#000000' },
      { name: 'nucleus', value: 128, color: '#ff0000' },
      { name: 'stroma', value: 255, color: '#00ff00' },
    ];
    const width = 301;
    const height = 203;
    const labels = new Uint8Array(width * height);
    let seed = 7;
    for (let i = 0; i < labels.length; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      labels[i] = (i % width) % 7 === 0 ? 2 : seed % 3 === 0 ? 1 : 0; // thin stripes and noise
    }
    const dir = await mkdtemp(join(tmp, 'pyramid-'));
    const writer = new SlideOutputWriter({ dir, stem: 'p', width, height, classes: three, mpp: null, tileSize: 64 });
    for (let y = 0; y < height; y += 50) {
      const rows = Math.min(50, height - y);
      const band = labels.slice(y * width, (y + rows) * width);
      writer.write({
        y,
        x: 0,
        stripe: 0,
        height: rows,
        width,
        labels: band,
        probabilities: new Float32Array(rows * width * 3),
      });
    }
    const outputs = await writer.finish({ data: new Uint8Array(30 * 20 * 3), width: 30, height: 20, channels: 3 });
    const sizes = pyramidLevels(width, height, 64);
    expect(sizes).toEqual([
      { width: 301, height: 203 },
      { width: 150, height: 101 },
      { width: 75, height: 50 },
      { width: 37, height: 25 },
    ]);
    expect((await sharp(outputs.labels).metadata()).pages).toBe(4);
    // Reference: level 0 as values, then the mode of each 2x2 block (ties: top-left first).
    let expected = Uint8Array.from(labels, (l) => three[l].value);
    for (const [page, size] of sizes.entries()) {
      if (page > 0) {
        const above = sizes[page - 1];
        const next = new Uint8Array(size.width * size.height);
        for (let y = 0; y < size.height; y++)
          for (let x = 0; x < size.width; x++) {
            const at = (dy: number, dx: number) => expected[(2 * y + dy) * above.width + 2 * x + dx];
            const block = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
            const count = (v: number) => block.filter((b) => b === v).length;
            next[y * size.width + x] = block.reduce((best, v) => (count(v) > count(best) ? v : best), block[0]);
          }
        expected = next;
      }
      const { data, info } = await sharp(outputs.labels, { page })
        .extractChannel(0)
        .raw()
        .toBuffer({ resolveWithObject: true });
      expect([info.width, info.height]).toEqual([size.width, size.height]);
      expect(new Set(data).size).toBeLessThanOrEqual(3);
      expect(
        [...new Set(data)].every((v) => v === 0 || v === 128 || v === 255),
        `page ${page}`,
      ).toBe(true);
      expect(Buffer.from(data).equals(Buffer.from(expected)), `page ${page} pixels`).toBe(true);
    }
    if (hasTool('vipsheader')) {
      expect(execFileSync('vipsheader', [`${outputs.labels}[page=2]`], { encoding: 'utf8' })).toMatch(/75x50 uchar/);
    }
  });
});
