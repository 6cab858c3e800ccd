import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NUCLEUS_CLASSES, saveTinyUnet } from '../../../packages/tiler/test/tiny-model.mjs';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

function run(cmd: string, args: string[]) {
  const result = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, TESSERA_BACKEND: 'wasm' } });
  return { code: result.status, stdout: result.stdout ?? '', stderr: result.stderr ?? '', missing: !!result.error };
}

let root: string;
let model: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tessera-wsi-'));
  model = join(root, 'model');
  await saveTinyUnet(model, { classes: NUCLEUS_CLASSES, tileSize: 256, seed: 1, mpp: 0.499, createdBy: 'cli test' });
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('whole-slide prediction through the CLI', () => {
  it('tessera info prints the levels and µm/px of an SVS', () => {
    const { code, stdout } = run(process.execPath, [BIN, 'info', CMU]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/svs \(vendor aperio\)/);
    expect(stdout).toMatch(/0: 2220 x 2967, downsample 1\.000, tiles 240x240, JPEG/);
    expect(stdout).toMatch(/0\.4990 x 0\.4990 µm\/px \(aperio\)/);
    const json = JSON.parse(run(process.execPath, [BIN, 'info', CMU, '--json']).stdout);
    expect(json.levels[0]).toMatchObject({ width: 2220, height: 2967 });
  });

  it('tessera info fails with exit code 5 on a file that is not a slide', () => {
    const { code, stderr } = run(process.execPath, [BIN, 'info', BIN]);
    expect(code).toBe(5);
    expect(stderr).toMatch(/bin\.js" could not be opened: expected a tiled or pyramidal TIFF/);
  });

  it('predicts CMU-1-Small-Region.svs into a pyramidal TIFF with the slide geometry', async () => {
    const out = join(root, 'out');
    const { code, stdout, stderr } = run(process.execPath, [
      BIN,
      'predict',
      CMU,
      '--model',
      model,
      '--out',
      out,
      '--workers',
      '2',
      '--batch',
      '2',
      '--json',
    ]);
    expect(stderr).not.toMatch(/error/);
    expect(code).toBe(0);
    const record = JSON.parse(stdout).outputs[0];
    expect(record.wholeSlide).toMatchObject({ width: 2220, height: 2967, level: 0, mpp: 0.499 });
    const labels = join(out, 'CMU-1-Small-Region_labels.tif');
    const meta = await sharp(labels).metadata();
    expect([meta.width, meta.height, meta.channels, meta.pages]).toEqual([2220, 2967, 1, 5]);
    expect(meta.resolutionUnit).toBe('cm');
    expect(meta.density).toBeCloseTo((1000 / 0.499) * 25.4, 0); // dpi of 0.499 µm/px
    const level2 = await sharp(labels, { page: 2 }).metadata();
    expect([level2.width, level2.height]).toEqual([555, 741]);
    for (const page of [0, 1, 2, 3, 4]) {
      // Reduced levels too: averaging 0 and 255 would invent 64, 128, 191...
      const values = new Set(await sharp(labels, { page }).extractChannel(0).raw().toBuffer());
      expect(
        [...values].every((v) => v === 0 || v === 255),
        `page ${page}`,
      ).toBe(true);
    }
    const areas = JSON.parse(await readFile(join(out, 'CMU-1-Small-Region_areas.json'), 'utf8'));
    expect(areas.classes[0].pixels + areas.classes[1].pixels).toBe(2220 * 2967);
    expect(areas.classes[1].areaUm2).toBeCloseTo(areas.classes[1].pixels * 0.499 * 0.499, 0);
    expect((await readdir(out)).sort()).toEqual([
      'CMU-1-Small-Region_areas.csv',
      'CMU-1-Small-Region_areas.json',
      'CMU-1-Small-Region_labels.tif',
      'CMU-1-Small-Region_overlay.png',
      'CMU-1-Small-Region_report.html',
      'predict.resolved.json',
    ]);
    const report = await readFile(join(out, 'CMU-1-Small-Region_report.html'), 'utf8');
    expect(report).toContain('<img src="data:image/png;base64,');
    expect(report).toContain(`${areas.classes[1].pixels.toLocaleString('en-US')}</td>`);
    expect(report).toContain('2220 x 2967 px');
    const vips = run('vipsheader', ['-f', 'n-pages', labels]);
    if (!vips.missing) expect(vips.stdout.trim()).toBe('5');
    const openslide = run('openslide-show-properties', [labels]);
    if (!openslide.missing) {
      expect(openslide.stdout).toMatch(/openslide\.level-count: '5'/);
      expect(openslide.stdout).toMatch(/tiff\.XResolution: '20040\.0/); // 0.499 µm/px in pixels per cm
    }
  });
});

describe('slides in JPEG 2000 and DICOM through the CLI', () => {
  const hasOpj = spawnSync('opj_compress', ['-h']).status !== null;
  const FIXTURES = join(DATA, 'slides/wsi-openslide-python-fixtures');

  it.skipIf(!hasOpj)(
    'predicts an Aperio JPEG 2000 SVS (33003): the pipeline gets exactly the decoded pixels',
    async () => {
      const { writeJpeg2000Svs } = await import('../../../packages/tiler/test/make-slides.mjs');
      const { openSlide, readRegion } = await import('@tessera/tiler');
      const cmu = await openSlide(CMU);
      const { data } = await readRegion(cmu, { x: 600, y: 900, width: 720, height: 600 });
      const svs = join(root, 'j2k.svs');
      await writeJpeg2000Svs(svs, data, 720, 600, { compression: 33003, downsamples: [] });
      const info = run(process.execPath, [BIN, 'info', svs]);
      expect(info.stdout).toMatch(/0: 720 x 600, downsample 1\.000, tiles 240x240, Aperio JPEG 2000 \(YCbCr\)/);
      const out = join(root, 'out-j2k');
      const result = run(process.execPath, [BIN, 'predict', svs, '--model', model, '--out', out, '--json']);
      expect(result.stderr).not.toMatch(/error/i);
      expect(result.code).toBe(0);
      expect(JSON.parse(result.stdout).outputs[0].wholeSlide).toMatchObject({ width: 720, height: 600, mpp: 0.499 });
      // The pipeline gets exactly the decoded pixels: the same pixels in a lossless tiled TIFF give the same labels.
      const decoded = await readRegion(await openSlide(svs), { x: 0, y: 0, width: 720, height: 600 });
      const lossless = join(root, 'j2k-decoded.tif');
      await sharp(decoded.data, { raw: { width: 720, height: 600, channels: 3 } })
        .tiff({ tile: true, tileWidth: 256, tileHeight: 256, compression: 'deflate' })
        .toFile(lossless);
      expect(run(process.execPath, [BIN, 'predict', lossless, '--model', model, '--out', out]).code).toBe(0);
      const labels = async (name: string) => sharp(join(out, name)).extractChannel(0).raw().toBuffer();
      const fromJ2k = await labels('j2k_labels.tif');
      expect(fromJ2k.equals(await labels('j2k-decoded_labels.tif'))).toBe(true);
      expect(new Set(fromJ2k).size).toBe(2); // both classes present: the comparison can fail
    },
  );

  it('predicts a DICOM slide given as its folder or as one of its files, and names non-slide DICOM files', async () => {
    const { copyFile, mkdir, writeFile } = await import('node:fs/promises');
    const folder = join(root, 'dicom-slide');
    await mkdir(folder);
    for (const name of ['boxes_0.dcm', 'boxes_1.dcm']) await copyFile(join(FIXTURES, name), join(folder, name));
    const info = run(process.execPath, [BIN, 'info', folder]);
    expect(info.code).toBe(0);
    expect(info.stdout).toMatch(/format: +dicom/);
    expect(info.stdout).toMatch(/0: 16 x 16, downsample 1\.000, tiles 64x64, DICOM JPEG baseline \(boxes_0\.dcm\)/);
    const out = join(root, 'out-dicom');
    const result = run(process.execPath, [BIN, 'predict', folder, '--model', model, '--out', out, '--json']);
    expect(result.stderr).not.toMatch(/error/i);
    expect(result.code).toBe(0);
    const outputs = JSON.parse(result.stdout).outputs;
    expect(outputs).toHaveLength(1); // one slide, not one per instance
    expect(outputs[0].wholeSlide).toMatchObject({ width: 16, height: 16, mpp: 0.499 });
    expect((await sharp(join(out, 'dicom-slide_labels.tif')).metadata()).width).toBe(16);
    const single = run(process.execPath, [BIN, 'predict', join(folder, 'boxes_0.dcm'), '--model', model, '--out', out]);
    expect(single.code).toBe(0);
    // A DICOM file that is not a slide: exit 5 naming what it is, never "not an image".
    const ct = join(root, 'ct.dcm');
    const bytes = Buffer.from(await readFile(join(FIXTURES, 'boxes_0.dcm')));
    const sop = bytes.indexOf('1.2.840.10008.5.1.4.1.1.77.1.6');
    bytes.write('1.2.840.10008.5.1.4.1.1.2\0\0\0\0\0', sop, 'latin1'); // CT Image Storage, same length
    let next = bytes.indexOf('1.2.840.10008.5.1.4.1.1.77.1.6', sop + 1);
    while (next >= 0) {
      bytes.write('1.2.840.10008.5.1.4.1.1.2\0\0\0\0\0', next, 'latin1');
      next = bytes.indexOf('1.2.840.10008.5.1.4.1.1.77.1.6', next + 1);
    }
    await writeFile(ct, bytes);
    const refused = run(process.execPath, [BIN, 'predict', ct, '--model', model, '--out', join(root, 'out-ct')]);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/a DICOM file/);
    expect(refused.stderr).toMatch(/CT Image/);
  });
});

describe('interrupted whole-slide prediction', () => {
  it('SIGTERM exits 130 keeping the finished rows, and --resume completes to the same bytes', async () => {
    // A 1024 x 1536 crop of CMU-1 as a tiled pyramidal TIFF: 7 bands of rows with 256 px tiles.
    const slide = join(root, 'cmu-crop.tif');
    await sharp(CMU)
      .extract({ left: 300, top: 400, width: 1024, height: 1536 })
      .tiff({ tile: true, tileWidth: 256, tileHeight: 256, pyramid: true, compression: 'jpeg', quality: 90 })
      .toFile(slide);
    const args = (out: string, ...more: string[]) => [
      BIN,
      'predict',
      slide,
      '--model',
      model,
      '--out',
      out,
      '--workers',
      '2',
      '--tile',
      '256',
      '--no-tissue',
      '--probabilities',
      ...more,
    ];
    const env = { ...process.env, TESSERA_BACKEND: 'wasm' };
    const straight = join(root, 'slide-straight');
    const started = performance.now();
    expect(run(process.execPath, args(straight)).code).toBe(0);
    console.log(`uninterrupted run: ${((performance.now() - started) / 1000).toFixed(1)} s`);

    const out = join(root, 'slide-resumed');
    const journal = join(out, '.cmu-crop.partial', 'journal.json');
    const child = spawn(process.execPath, args(out), { env });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((done) => child.on('exit', (code) => done(code)));
    let rows = 0;
    for (let i = 0; i < 1200 && rows === 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
      if (existsSync(journal)) rows = JSON.parse(await readFile(journal, 'utf8').catch(() => '{"rows":0}')).rows;
    }
    child.kill('SIGTERM');
    const code = await exited;
    console.log(`killed after ${rows} journaled rows; exit code ${code}`);
    expect(rows).toBeGreaterThan(0);
    expect(stderr).toContain('SIGTERM received');
    expect(code).toBe(130);
    expect(stderr).toMatch(
      /interrupted after \d+ of 1536 output rows; the finished rows are kept in ".*\.cmu-crop\.partial"/,
    );
    expect(stderr).toMatch(/hint: Run the same command with --resume to continue from row \d+/);
    expect(await readdir(out)).toEqual(['.cmu-crop.partial']); // no final output, not even half-written

    const other = run(process.execPath, args(out, '--resume', '--overlap', '64'));
    expect(other.code).toBe(2);
    expect(other.stderr).toContain(
      `Cannot resume from "${join(out, '.cmu-crop.partial')}": it was made with --overlap 48, but this run has --overlap 64.`,
    );
    expect(other.stderr).toMatch(/hint: Drop --resume to predict the slide from the start/);
    expect(existsSync(journal)).toBe(true);

    const resumed = run(process.execPath, args(out, '--resume', '--json'));
    expect(resumed.code).toBe(0);
    expect(resumed.stderr).toMatch(/resumed at row [1-9]\d* of 1536/);
    expect(JSON.parse(resumed.stdout).outputs[0].wholeSlide.resumedRows).toBeGreaterThan(0);
    const names = (await readdir(straight)).filter((n) => /_(labels|prob_\w+)\.tif$|_overlay\.png$|_areas\./.test(n));
    expect(names).toHaveLength(6); // labels, 2 probability maps, overlay, areas JSON and CSV
    expect((await readdir(out)).sort()).toEqual((await readdir(straight)).sort()); // partial folder gone
    for (const name of names) {
      const same = (await readFile(join(out, name))).equals(await readFile(join(straight, name)));
      expect(same, name).toBe(true);
    }
  });
});

describe('GeoJSON polygons for QuPath', () => {
  /** Area per class of a FeatureCollection: exterior minus holes (shoelace), rings closed and wound as RFC 7946 says. */
  function areasOf(
    features: {
      geometry: { coordinates: number[][][] };
      properties: { objectType: string; classification: { name: string } };
    }[],
    objectType = 'detection',
  ) {
    const areas: Record<string, number> = {};
    for (const { geometry, properties } of features) {
      expect(properties.objectType).toBe(objectType);
      geometry.coordinates.forEach((ring, r) => {
        expect(ring[0]).toEqual(ring[ring.length - 1]);
        let a = 0;
        for (let i = 0; i + 1 < ring.length; i++) a += (ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1]) / 2;
        expect(r === 0 ? a > 0 : a < 0).toBe(true);
        const name = properties.classification.name;
        areas[name] = (areas[name] ?? 0) + a;
      });
    }
    return areas;
  }

  it('--geojson writes polygons of slides and images whose areas match the areas of the label maps', async () => {
    const slide = join(root, 'geo-crop.tif');
    await sharp(CMU)
      .extract({ left: 900, top: 1200, width: 512, height: 384 })
      .tiff({ tile: true, tileWidth: 256, tileHeight: 256, pyramid: true, compression: 'jpeg' })
      .toFile(slide);
    const image = join(root, 'geo-image.png');
    await sharp(CMU).extract({ left: 300, top: 300, width: 160, height: 120 }).png().toFile(image);
    const out = join(root, 'geo');
    const args = ['predict', slide, image, '--model', model, '--out', out, '--workers', '1', '--geojson', '--json'];
    const { code, stdout, stderr } = run(process.execPath, [BIN, ...args]);
    expect(stderr).not.toMatch(/error/);
    expect(code).toBe(0);
    const [slideRecord, imageRecord] = JSON.parse(stdout).outputs;
    expect(slideRecord.polygons.nucleus).toBeGreaterThan(100); // the untrained model's specks
    expect(imageRecord.polygons.nucleus).toBeGreaterThan(10);
    expect(slideRecord.geojson).toBe(join(out, 'geo-crop_polygons.geojson'));
    expect(imageRecord.geojson).toBe(join(out, 'geo-image_polygons.geojson'));
    expect(stderr).toContain(`polygons: ${slideRecord.geojson} (${slideRecord.polygons.nucleus} nucleus; `);
    const collection = JSON.parse(await readFile(slideRecord.geojson, 'utf8'));
    expect(collection.type).toBe('FeatureCollection');
    expect(collection.features).toHaveLength(slideRecord.polygons.nucleus);
    expect(collection.features[0].properties.classification).toEqual({ name: 'nucleus', color: [255, 0, 0] });
    const areas = JSON.parse(await readFile(join(out, 'geo-crop_areas.json'), 'utf8'));
    expect(areasOf(collection.features)).toEqual({ nucleus: areas.classes[1].pixels });
    const imageFeatures = JSON.parse(await readFile(imageRecord.geojson, 'utf8')).features;
    expect(areasOf(imageFeatures)).toEqual({ nucleus: imageRecord.classPixels.nucleus });
    const report = await readFile(join(out, 'geo-crop_report.html'), 'utf8');
    expect(report).toContain(`geo-crop_polygons.geojson: ${slideRecord.polygons.nucleus} nucleus`);

    const bad = run(process.execPath, [
      BIN,
      'predict',
      image,
      '--model',
      model,
      '--out',
      out,
      '--geojson-min-area',
      '-2',
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('Expected --geojson-min-area to be a number of pixels >= 0 but received -2.');
  });

  it('--geojson-object annotation writes QuPath annotations and implies --geojson; others exit with 2', async () => {
    const image = join(root, 'geo-annotated.png');
    await sharp(CMU).extract({ left: 300, top: 300, width: 160, height: 120 }).png().toFile(image);
    const out = join(root, 'geo-annotations');
    const args = ['predict', image, '--model', model, '--out', out, '--geojson-object', 'annotation', '--json'];
    const { code, stdout, stderr } = run(process.execPath, [BIN, ...args]);
    expect(stderr).not.toMatch(/error/);
    expect(code).toBe(0);
    const [record] = JSON.parse(stdout).outputs;
    expect(record.geojson).toBe(join(out, 'geo-annotated_polygons.geojson'));
    const features = JSON.parse(await readFile(record.geojson, 'utf8')).features;
    expect(features.length).toBe(record.polygons.nucleus);
    expect(areasOf(features, 'annotation')).toEqual({ nucleus: record.classPixels.nucleus });
    const resolved = JSON.parse(await readFile(join(out, 'predict.resolved.json'), 'utf8'));
    expect([resolved.geojson, resolved.geojsonObject]).toEqual([true, 'annotation']);

    const bad = run(process.execPath, [
      BIN,
      'predict',
      image,
      '--model',
      model,
      '--out',
      out,
      '--geojson-object',
      'cells',
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain(
      'Expected --geojson-object to be one of "detection", "annotation" but received "cells".',
    );
  });
});
