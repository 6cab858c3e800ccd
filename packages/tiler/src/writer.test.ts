import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlideOutputWriter, VipsFileWriter, vipsHeader } from './writer.js';

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
      writer.write({ y, height: 100, width, labels, probabilities: new Float32Array(100 * width * 2) });
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
    writer.write({ y: 0, height: 5, width: 10, labels: new Uint8Array(50), probabilities: new Float32Array(100) });
    await writer.abort();
    expect(await readdir(dir)).toEqual([]);
  });
});
