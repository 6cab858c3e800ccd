/**
 * Distributed prediction's foundation: a slide cut into regions (splitRegions), each predicted on its own
 * (streamSlidePrediction with `region`, as a worker on another machine would), and assembled
 * (assembleSlidePrediction) gives the same output files, byte for byte, as one predictSlide run; so do regions merged
 * as they arrive (appendSlideRegions), whatever their order.
 */
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveTinyUnet } from '../test/tiny-model.mjs';
import { appendSlideRegions, assembleSlidePrediction } from './assemble.js';
import { planSlidePrediction, predictSlide, streamSlidePrediction, type SlidePlan } from './predict-slide.js';
import { splitRegions, type SlideRegion } from './regions.js';
import { quantizeBand, type QuantizedBand } from './writer.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const CMU = join(DATA, 'slides/wsi-cmu1-small-region-svs/CMU-1-Small-Region.svs');

let tmp: string;
let model: string;
let slide: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-regions-'));
  model = join(tmp, 'model');
  await saveTinyUnet(model);
  // A 700 x 520 crop of the CMU slide as a tiled TIFF: several tile rows and (with a narrow stripe width) stripes.
  slide = join(tmp, 'crop.tif');
  await sharp(CMU)
    .extract({ left: 900, top: 1200, width: 700, height: 520 })
    .tiff({ tile: true, tileWidth: 128, tileHeight: 128, compression: 'deflate' })
    .toFile(slide);
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const options = (out: string) => ({
  model,
  out,
  tile: 96,
  workers: 1,
  batchSize: 3,
  backend: 'cpu',
  stripeWidth: 300,
  probabilities: true,
  geojson: true,
});

/** A whole run, and every region predicted on its own, as the tests below need them (made once). */
let prediction:
  | Promise<{
      whole: string;
      plan: SlidePlan;
      regions: SlideRegion[];
      results: Map<number, QuantizedBand[]>;
      engine: string;
    }>
  | undefined;
function predicted() {
  prediction ??= (async () => {
    const whole = join(tmp, 'whole');
    await predictSlide(slide, options(whole));
    const plan = await planSlidePrediction(slide, options(tmp));
    const regions = splitRegions(plan, 2);
    const results = new Map<number, QuantizedBand[]>();
    let engine = '';
    // In reverse order, as independent workers may finish them.
    for (const region of [...regions].reverse()) {
      const bands: QuantizedBand[] = [];
      const run = await streamSlidePrediction(
        slide,
        { ...options(tmp), region },
        { band: (band) => void bands.push(quantizeBand(band, plan.numClasses, true)) },
      );
      engine = run.engine;
      results.set(region.index, bands);
    }
    return { whole, plan, regions, results, engine };
  })();
  return prediction;
}

describe('regions', () => {
  it('cover each stripe once, at tile-row boundaries', async () => {
    const plan = await planSlidePrediction(slide, options(tmp));
    const regions = splitRegions(plan, 2);
    expect(plan.stripes.length).toBeGreaterThan(1);
    for (const stripe of plan.stripes) {
      const mine = regions.filter((r) => r.stripe === stripe.index);
      expect(mine[0].y).toBe(0);
      mine.forEach((r, i) => i > 0 && expect(r.y).toBe(mine[i - 1].y + mine[i - 1].height));
      expect(mine.at(-1)!.y + mine.at(-1)!.height).toBe(plan.height);
      for (const r of mine.slice(1)) expect(stripe.plan.keptRowStarts).toContain(r.y);
    }
    expect(() => splitRegions(plan, 0)).toThrow(/tileRows/);
  });

  it('predicted one by one and assembled, give the bytes of a whole run', async () => {
    const { whole, regions, results, engine } = await predicted();
    for (const region of regions) {
      const bands = results.get(region.index)!;
      expect(bands.reduce((n, b) => n + b.height, 0)).toBe(region.height);
      expect(bands[0].y).toBe(region.y);
    }
    const assembled = join(tmp, 'assembled');
    await assembleSlidePrediction(slide, options(assembled), {
      engine,
      regions,
      read: async (region: SlideRegion) => results.get(region.index)!,
    });
    const names = (await readdir(whole)).sort();
    expect(names).toEqual((await readdir(assembled)).sort());
    expect(names).toContain('crop_labels.tif');
    expect(names).toContain('crop_polygons.geojson');
    for (const name of names) {
      const same = (await readFile(join(whole, name))).equals(await readFile(join(assembled, name)));
      expect(same, name).toBe(true);
    }
    // A missing region is refused before anything is written.
    await expect(
      assembleSlidePrediction(slide, options(join(tmp, 'partial')), {
        engine,
        regions: regions.slice(1),
        read: async (region: SlideRegion) => results.get(region.index)!,
      }),
    ).rejects.toThrow(/regions of stripe 0 to follow each other from row 0/);
  });

  it('merged as they arrive, in any order, leave only the last one to the final assembly: the same bytes', async () => {
    const { whole, plan, regions, results, engine } = await predicted();
    expect(regions.length).toBeGreaterThan(4);
    const out = join(tmp, 'streamed');
    const workDir = join(tmp, 'streamed-work');
    const arrived = new Set<number>();
    const reads: number[] = [];
    const read = async (region: SlideRegion) => {
      reads.push(region.index);
      return arrived.has(region.index) ? results.get(region.index)! : null;
    };
    const append = () => appendSlideRegions(slide, { ...options(out), plan }, { engine, regions, read, workDir });
    // Regions 1 and 2 arrive before region 0: they wait; region 0 brings all three in.
    arrived.add(1);
    expect(await append()).toEqual({ written: 0, next: regions[0] });
    arrived.add(2);
    expect(await append()).toEqual({ written: 0, next: regions[0] });
    arrived.add(0);
    expect(await append()).toEqual({ written: 3, next: regions[3] });
    // The rest arrive from the bottom up, but for the last one in output order, which the final assembly writes.
    const last = regions.at(-1)!;
    for (const region of regions.slice(3, -1).reverse()) {
      arrived.add(region.index);
      await append();
    }
    expect((await append()).next).toEqual(last);
    expect(await readdir(out)).toEqual([]); // no output file before the final assembly
    arrived.add(last.index);
    reads.length = 0;
    await assembleSlidePrediction(slide, options(out), { engine, regions, read, workDir });
    expect(reads).toEqual([last.index]);
    const names = (await readdir(whole)).sort();
    expect((await readdir(out)).sort()).toEqual(names);
    for (const name of names) {
      const same = (await readFile(join(whole, name))).equals(await readFile(join(out, name)));
      expect(same, name).toBe(true);
    }
    await expect(readdir(workDir)).rejects.toThrow(/ENOENT/); // removed with the final files
    // Without every region, the final assembly names the one missing.
    arrived.delete(regions[1].index);
    await expect(
      assembleSlidePrediction(slide, options(join(tmp, 'incomplete')), { engine, regions, read }),
    ).rejects.toThrow(/result of region 1 \(rows \d+-\d+ of stripe 0\) but it is not ready/);
    await expect(
      appendSlideRegions(slide, options(join(tmp, 'incomplete')), { engine, regions, read }),
    ).rejects.toThrow(/Expected a workDir for appendSlideRegions/);
  });
});
