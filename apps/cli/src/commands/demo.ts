import { mkdir, rename } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import sharp from 'sharp';
import { createRandom, randSyntheticTissue, writeFileAtomic, writePng, type Random } from '@tessera/core';
import { listModelPackages } from '../model-packages.js';
import { info, warn } from '../progress.js';
import { importOnnx } from '../runtime.js';
import { importTiler } from '../tiler.js';
import { exportCommand } from './export.js';
import { evaluateCommand } from './evaluate.js';
import { predictCommand } from './predict.js';
import { trainCommand } from './train.js';
import type { Command } from 'commander';

/** Options of `tessera demo`. */
export interface DemoOptions {
  out: string;
  timeBudget: number;
  seed: number;
  backend?: string;
  quiet?: boolean;
  json?: boolean;
}

/** Side lengths of the demo slide (pixels at 0.5 µm/px). */
export const DEMO_SLIDE_SIZE = { width: 3072, height: 2304 } as const;

/**
 * Draws an H&E-like whole slide: tissue (stroma with nuclei) inside an irregular outline on a white glass
 * background, written as a tiled pyramidal JPEG TIFF at 0.5 µm/px (written to a temporary name, then renamed).
 */
export async function writeDemoSlide(path: string, rng: Random): Promise<void> {
  const { width, height } = DEMO_SLIDE_SIZE;
  const { image } = randSyntheticTissue({ width, height, density: 5 }, rng.fork('slide'));
  // Outline: an ellipse whose radius is modulated by a few random harmonics.
  const harmonics = Array.from({ length: 4 }, (_, k) => ({
    k: k + 2,
    amp: rng.uniform(0.03, 0.09),
    phase: rng.uniform(0, Math.PI * 2),
  }));
  const cx = width / 2;
  const cy = height / 2;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const dx = (x - cx) / (width * 0.42);
      const dy = (y - cy) / (height * 0.4);
      const angle = Math.atan2(dy, dx);
      let r = 1;
      for (const h of harmonics) r += h.amp * Math.sin(h.k * angle + h.phase);
      if (Math.hypot(dx, dy) > r) {
        const i = (y * width + x) * 3;
        image.data[i] = 244;
        image.data[i + 1] = 242;
        image.data[i + 2] = 245;
      }
    }
  }
  const partial = `${path}.partial.tif`;
  await sharp(Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength), {
    raw: { width, height, channels: 3 },
  })
    .tiff({
      tile: true,
      tileWidth: 256,
      tileHeight: 256,
      pyramid: true,
      compression: 'jpeg',
      quality: 90,
      xres: 2000, // pixels per mm: 0.5 µm/px
      yres: 2000,
      resolutionUnit: 'cm',
    })
    .toFile(partial);
  await rename(partial, path);
}

/**
 * `tessera demo`: draws a small labelled H&E-like data set and a pyramidal slide, trains a small U-Net on the
 * tiles within the time budget, evaluates it on held-out tiles, predicts them with overlays, and predicts the
 * whole slide (pyramidal label TIFF, overlay, class areas, report).
 */
export async function demoCommand(opts: DemoOptions): Promise<void> {
  const out = resolve(opts.out);
  const started = performance.now();
  const rng = createRandom(opts.seed);
  const dirs = {
    trainImages: join(out, 'data', 'train', 'images'),
    trainMasks: join(out, 'data', 'train', 'masks'),
    testImages: join(out, 'data', 'test', 'images'),
    testMasks: join(out, 'data', 'test', 'masks'),
  };
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
  const write = async (imagesDir: string, masksDir: string, name: string, size: number) => {
    const { image, mask } = randSyntheticTissue({ width: size, height: size }, rng.fork(name));
    await writePng(join(imagesDir, `${name}.png`), image);
    await writePng(join(masksDir, `${name}.png`), { data: mask.data, width: size, height: size, channels: 1 });
  };
  for (let i = 0; i < 12; i++)
    await write(dirs.trainImages, dirs.trainMasks, `tile-${String(i).padStart(2, '0')}`, 192);
  for (let i = 0; i < 2; i++) await write(dirs.testImages, dirs.testMasks, `test-${i}`, 384);
  const classes = join(out, 'data', 'classes.json');
  await writeFileAtomic(
    classes,
    JSON.stringify(
      {
        classes: [
          { name: 'background', value: 0, color: '#f0e0f0' },
          { name: 'nucleus', value: 1, color: '#2060ff' },
        ],
      },
      null,
      2,
    ),
  );
  info(opts, `demo data: 12 training tiles (192 px) and 2 test tiles (384 px) in ${join(out, 'data')}`);
  const model = join(out, 'model');
  const fakeCommand = { getOptionValueSource: () => 'cli' } as unknown as Command;
  await trainCommand(
    {
      arch: 'unet',
      archOption: ['depth=3', 'baseFilters=8'],
      images: dirs.trainImages,
      masks: dirs.trainMasks,
      classes,
      out: model,
      epochs: 200,
      timeBudget: opts.timeBudget,
      tile: 96,
      batch: 4,
      stepsPerEpoch: 10,
      lr: 3e-3,
      schedule: 'constant',
      valSplit: 0.17,
      seed: opts.seed,
      backend: opts.backend,
      quiet: opts.quiet,
    },
    fakeCommand,
  );
  info(opts, 'evaluating on the 2 held-out test tiles:');
  await evaluateCommand({
    model,
    images: dirs.testImages,
    masks: dirs.testMasks,
    backend: opts.backend,
    quiet: opts.quiet,
  });
  if (await importOnnx()) {
    // Keep an ONNX export beside the weights (checked against tfjs); both predictions below then run it.
    await exportCommand(model, { format: 'onnx', quiet: opts.quiet });
  }
  const predictions = join(out, 'predictions');
  await predictCommand([dirs.testImages], {
    model,
    out: predictions,
    overlay: true,
    probabilities: true,
    backend: opts.backend,
    quiet: opts.quiet,
  });
  let slideLines: string[] = [];
  if (await importTiler()) {
    const slide = join(out, 'data', 'slide.tif');
    await writeDemoSlide(slide, rng);
    const { width, height } = DEMO_SLIDE_SIZE;
    info(opts, `demo slide: ${slide} (${width} x ${height} px, pyramidal JPEG TIFF, 0.5 µm/px)`);
    const slideOut = join(out, 'slide');
    await predictCommand([slide], { model, out: slideOut, backend: opts.backend, quiet: opts.quiet });
    slideLines = [
      `  slide:        ${join(slideOut, 'slide_labels.tif')} (pyramidal label TIFF; opens in QuPath, OpenSlide, libvips)`,
      `                ${join(slideOut, 'slide_overlay.png')}, ${join(slideOut, 'slide_areas.csv')}`,
      `  slide report: ${join(slideOut, 'slide_report.html')}`,
    ];
  } else {
    slideLines = ['  slide:        skipped (npm install @tessera/tiler for whole slides)'];
  }
  const realLines = await predictModelSamples(join(out, 'real'), opts);
  const seconds = (performance.now() - started) / 1000;
  info(opts, `\ndemo finished in ${seconds.toFixed(0)} s`);
  info(opts, `  model:        ${model} (manifest.json, loss-curve.png, history.csv)`);
  info(opts, `  report:       ${join(model, 'report.html')} (curves, per-class scores, confusion matrix, samples)`);
  info(opts, `  predictions:  ${predictions} (label maps, probability maps, overlays)`);
  for (const line of slideLines) info(opts, line);
  for (const line of realLines) info(opts, line);
}

/**
 * Real tissue: every installed model package that ships a sample (`"tessera": { "sample": ... }`, e.g. the H&E
 * region in `@tessera/model-he-nuclei`) predicts it with its own model, into `<out>/<package>/`. Returns the lines of
 * the summary; says how to get such a package when none is installed.
 */
async function predictModelSamples(out: string, opts: DemoOptions): Promise<string[]> {
  const packages = (await listModelPackages()).filter((p) => p.valid && p.sample !== null);
  if (packages.length === 0) {
    return [
      '  real tissue:  skipped (npm install @tessera/model-he-nuclei: a pretrained H&E nuclei model and a sample)',
    ];
  }
  const tiler = await importTiler();
  const lines: string[] = [];
  for (const pkg of packages) {
    if (!pkg.valid || pkg.sample === null) continue;
    const name = pkg.name.replace(/^@/, '').replace(/\//g, '-');
    const isSlide = /\.(tiff?|svs)$/i.test(pkg.sample);
    if (isSlide && !tiler) {
      lines.push(`  real tissue:  ${pkg.source} skipped (its sample is a slide: npm install @tessera/tiler)`);
      continue;
    }
    info(opts, `\nreal tissue: ${pkg.source} predicts its sample ${pkg.sample}`);
    const dir = join(out, name);
    try {
      await predictCommand([pkg.sample], { model: pkg.dir, out: dir, overlay: true, quiet: opts.quiet });
    } catch (error) {
      // The demo itself succeeded; a package that cannot run here (its architecture not installed...) is reported.
      warn(opts, `${pkg.source} could not predict its sample: ${(error as Error).message}`);
      lines.push(`  real tissue:  ${pkg.source} FAILED (${(error as Error).message.split('\n')[0]})`);
      continue;
    }
    const stem = basename(pkg.sample, extname(pkg.sample));
    lines.push(
      `  real tissue:  ${pkg.source} on ${pkg.sample}`,
      isSlide
        ? `                ${join(dir, `${stem}_overlay.png`)}, ${join(dir, `${stem}_report.html`)}`
        : `                ${join(dir, `${stem}_overlay.png`)}`,
    );
  }
  return lines;
}
