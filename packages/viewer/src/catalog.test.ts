import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCatalog } from './catalog.js';
import { ViewerInputError } from './errors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tessera-catalog-'));
  await mkdir(join(dir, 'slides'));
  await mkdir(join(dir, 'out'));
  for (const name of ['a.svs', 'b.ome.tif', 'c.png', 'gone.svs']) await writeFile(join(dir, 'slides', name), '');
  await rm(join(dir, 'slides', 'gone.svs'));
  for (const name of [
    'a_labels.tif',
    'a_prob_nucleus.tif',
    'a_prob_background.tif',
    'a_polygons.geojson',
    'a_report.html',
    'b_labels.tif',
    'c_labels.png',
    'gone_labels.tif',
  ]) {
    await writeFile(join(dir, 'out', name), '');
  }
  await writeFile(
    join(dir, 'out', 'a_areas.json'),
    JSON.stringify({
      classes: [
        { name: 'glass', value: 0 },
        { name: 'nucleus', value: 1 },
      ],
    }),
  );
  await writeFile(
    join(dir, 'out', 'predict.resolved.json'),
    JSON.stringify({
      model: 'no/such/model',
      inputs: ['slides/a.svs', 'slides/b.ome.tif', 'slides/c.png', 'slides/gone.svs'],
    }),
  );
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('buildCatalog', () => {
  it('lists the slide first, then the other inputs of the predictions with their files', async () => {
    const catalog = await buildCatalog({ slide: 'slides/a.svs', predictions: 'out', cwd: dir });
    expect(catalog.entries.map((e) => [e.id, e.name, e.stem])).toEqual([
      ['0', 'a.svs', 'a'],
      ['1', 'b.ome.tif', 'b'],
      ['2', 'c.png', 'c'],
    ]);
    const [a, b, c] = catalog.entries;
    expect(a.labelsPath).toBe(join(dir, 'out', 'a_labels.tif'));
    expect(a.probabilities.map((p) => p.name)).toEqual(['background', 'nucleus']);
    expect(a.polygonsPath).toBe(join(dir, 'out', 'a_polygons.geojson'));
    expect(a.reportPath).toBe(join(dir, 'out', 'a_report.html'));
    expect(b.labelsPath).toBe(join(dir, 'out', 'b_labels.tif')); // OME-TIFF: the stem drops ".ome" as predict does
    expect(c.labelsPath).toBe(join(dir, 'out', 'c_labels.png'));
    expect(b.polygonsPath).toBeNull();
    // The model folder is gone: classes from the areas file, with a warning; the missing slide is left out.
    expect(catalog.classes!.map((k) => [k.name, k.value, k.background])).toEqual([
      ['glass', 0, true],
      ['nucleus', 1, false],
    ]);
    expect(catalog.classesFrom).toBe('a_areas.json (palette colours)');
    expect(catalog.warnings.join('\n')).toMatch(
      /model folder "no\/such\/model" named in .*predict\.resolved\.json was not found/,
    );
    expect(catalog.warnings.join('\n')).toMatch(/"slides\/gone\.svs" \(listed in .*\) was not found/);
  });

  it('names the missing slide', async () => {
    const error = await buildCatalog({ slide: 'slides/nope.svs', cwd: dir }).catch((e) => e);
    expect(error).toBeInstanceOf(ViewerInputError);
    expect(error.exitCode).toBe(4);
    expect(error.message).toBe(`Slide "slides/nope.svs" not found (looked for ${join(dir, 'slides/nope.svs')}).`);
  });

  it('names the missing predictions folder', async () => {
    const error = await buildCatalog({ slide: 'slides/a.svs', predictions: 'nope', cwd: dir }).catch((e) => e);
    expect(error.code).toBe('E_VIEWER_INPUT');
    expect(error.message).toMatch(/Predictions folder "nope" not found/);
    expect(error.hint).toMatch(/--out folder of a "tessera predict" run/);
  });

  it('names the label map it expected and the ones the folder holds', async () => {
    await writeFile(join(dir, 'slides', 'd.svs'), '');
    const error = await buildCatalog({ slide: 'slides/d.svs', predictions: 'out', cwd: dir }).catch((e) => e);
    expect(error.message).toMatch(
      /No label map of "d\.svs" in the predictions folder "out": expected d_labels\.tif \(whole slides\) or d_labels\.png \(images\) but it holds the label maps of "a", "b", "c", "gone"\./,
    );
    expect(error.hint).toBe('Predict the slide first: tessera predict --model <model> "slides/d.svs" --out "out".');
  });
});
