import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import {
  argmaxLabels,
  checkOutputDir,
  IMAGE_EXTENSIONS,
  imageStem,
  InputNotFoundError,
  InvalidOptionError,
  makeOutputDir,
  normalizeImage,
  predictProbabilities,
  renderOverlay,
  readImage,
  writeFileAtomic,
  writePng,
} from '@tessera/core';
import { loadRegistry } from '../plugins.js';
import { info, ProgressBar } from '../progress.js';
import { requireTiler } from '../tiler.js';
import {
  checkGeojsonOptions,
  describePolygons,
  geojsonOption,
  polygonsRecord,
  predictWholeSlide,
  wholeSlideOf,
} from './predict-slide.js';
import { startEngine } from './shared.js';
import { predictWithQueue, requireQueue } from './queue.js';
import { openPredictor } from '../runtime.js';

/** Options of `tessera predict`. */
export interface PredictCliOptions {
  model: string;
  out: string;
  probabilities?: boolean;
  overlay?: boolean;
  tile?: number;
  overlap?: number;
  backend?: string;
  /** `auto` (ONNX where the model converts and @tessera/onnx is installed), `onnx` or `tfjs`. */
  runtime?: string;
  /** `cpu` or `cuda` (ONNX runtime). */
  device?: string;
  /** Threads of the ONNX runtime (per worker for slides). */
  threads?: number;
  /** `fp32` (default) or `int8` (the model's `model.int8.onnx` on the ONNX runtime). */
  precision?: string;
  json?: boolean;
  quiet?: boolean;
  /** Whole-slide options (see `predict-slide.ts`). */
  workers?: number;
  batch?: number;
  mpp?: number;
  tissue?: boolean;
  /** Widest output stripe of a whole slide, in pixels. */
  stripeWidth?: number;
  /** Continue interrupted whole-slide predictions from their partial work in `out`. */
  resume?: boolean;
  /** Also write `<stem>_polygons.geojson` per image and slide (implied by `geojsonMinArea` and `geojsonObject`). */
  geojson?: boolean;
  /** Regions of fewer label-map pixels are left out of the GeoJSON. Default 0. */
  geojsonMinArea?: number;
  /** QuPath object type of the polygons: `detection` (default) or `annotation`. */
  geojsonObject?: string;
  /** Submit whole slides to the workers of this Redis queue (`tessera worker`) instead of predicting them here. */
  queue?: string;
  /** With `queue`: submit and exit. */
  detach?: boolean;
  /** With `queue`: output pixels per region job. */
  regionPixels?: number;
  /** `i/N`: predict only shard `i` of `N` of the sorted inputs. */
  shard?: string;
}

/** Folder entries `predict` picks up: images, and whole-slide files. */
const INPUT_EXTENSIONS = [...IMAGE_EXTENSIONS, '.svs', '.btf'];

/**
 * The files and slides named by the inputs: a folder gives its images and whole-slide files, and a folder holding
 * DICOM files (`.dcm`) is one DICOM slide (its series: one instance per level), as is a single `.dcm` file.
 */
async function expandInputs(inputs: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const input of inputs) {
    let info;
    try {
      info = await stat(input);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new InputNotFoundError(
        code === 'ENOENT'
          ? `Input ${input} does not exist.`
          : code === 'ELOOP'
            ? `Input ${input} cannot be opened: its symbolic links form a loop.`
            : `Input ${input} cannot be read (${(error as Error).message}).`,
        code === 'ELOOP'
          ? 'Point the link at the file or folder itself (`ls -l` shows where each link leads).'
          : 'Give image files or folders of images.',
        error,
      );
    }
    if (info.isDirectory()) {
      const entries = (await readdir(input)).filter((n) => !n.startsWith('.'));
      const names = entries.filter((n) => INPUT_EXTENSIONS.includes(extname(n).toLowerCase()));
      const dicom = entries.some((n) => extname(n).toLowerCase() === '.dcm');
      if (names.length === 0 && !dicom) {
        throw new InputNotFoundError(
          `Folder ${input} holds no images (${IMAGE_EXTENSIONS.join(', ')}) and no DICOM slide (.dcm).`,
          'Point at a folder of images, or at a folder holding the DICOM files of one slide.',
        );
      }
      if (dicom) files.push(input);
      files.push(...names.sort().map((n) => join(input, n)));
    } else files.push(input);
  }
  return files;
}

/**
 * `tessera predict`: ordinary images in memory; whole slides (SVS, OME-TIFF, tiled/pyramidal TIFF, or images over
 * 4096 x 4096) through the tiler of `@tessera/tiler`.
 */
export async function predictCommand(inputs: string[], opts: PredictCliOptions): Promise<void> {
  const out = { quiet: opts.quiet, json: opts.json };
  checkGeojsonOptions(opts);
  await checkOutputDir(opts.out); // writable, before any work (and nothing is left behind when a slide is refused)
  const slides: string[] = [];
  const files: string[] = [];
  let expanded = await expandInputs(inputs);
  if (opts.shard !== undefined) {
    const { parseShard, shardOf } = await requireQueue(`predict --shard ${opts.shard}`);
    const shard = parseShard(opts.shard);
    const all = expanded.length;
    expanded = shardOf(expanded, shard);
    info(out, `shard ${shard.index}/${shard.count}: ${expanded.length} of ${all} input(s)`);
  }
  if (opts.detach && !opts.queue) {
    throw new InvalidOptionError(
      '--detach submits to a queue: it needs --queue <url>.',
      'Add --queue redis://host:6379.',
    );
  }
  for (const file of expanded) ((await wholeSlideOf(file)) ? slides : files).push(file);
  const undo = await makeOutputDir(opts.out);
  try {
    await predictInto(slides, files, opts, out);
  } catch (error) {
    await undo(); // a run that fails leaves no empty output folder behind
    throw error;
  }
}

/** Predicts the slides and images into `opts.out` (made). */
async function predictInto(
  slides: string[],
  files: string[],
  opts: PredictCliOptions,
  out: { quiet?: boolean; json?: boolean },
): Promise<void> {
  // Installed plugins register their custom layers (here and, through `modules`, in the slide workers).
  const { modules } = await loadRegistry();
  const slideRecords: unknown[] = [];
  if (opts.queue && slides.length > 0) {
    slideRecords.push(...(await predictWithQueue(slides, { ...opts, ...out, queue: opts.queue })));
  } else {
    for (const slide of slides) slideRecords.push(await predictWholeSlide(slide, opts, out, modules));
  }
  if (files.length === 0) {
    await writeResolved(opts, slides, slideRecords.length);
    info(out, `predicted ${slides.length} whole slide(s) into ${opts.out}`);
    if (opts.json) process.stdout.write(JSON.stringify({ outputs: slideRecords }) + '\n');
    return;
  }
  await startEngine(opts.backend, out);
  const { predictor, manifest } = await openPredictor(opts, out);
  const k = manifest.classes.length;
  const bar = new ProgressBar('predict', files.length, out, 'image');
  const written: {
    input: string;
    labels: string;
    overlay?: string;
    probabilities?: string[];
    geojson?: string;
    polygons?: Record<string, number>;
    classPixels: Record<string, number>;
  }[] = [];
  for (const [index, file] of files.entries()) {
    const image = await readImage(file, { channels: manifest.inputChannels as 1 | 3 });
    const normalized = normalizeImage(image, manifest.normalization);
    const probs = await predictProbabilities(
      predictor,
      { data: normalized, width: image.width, height: image.height, channels: image.channels },
      {
        multiple: manifest.architecture.inputMultiple,
        receptiveField: manifest.architecture.receptiveField,
        tile: opts.tile,
        overlap: opts.overlap,
      },
    );
    const labels = argmaxLabels(probs, k);
    const values = new Uint8Array(labels.length);
    const counts = new Array<number>(k).fill(0);
    for (let i = 0; i < labels.length; i++) {
      values[i] = manifest.classes[labels[i]].value;
      counts[labels[i]]++;
    }
    const stem = imageStem(file);
    const record: (typeof written)[number] = {
      input: file,
      labels: join(opts.out, `${stem}_labels.png`),
      classPixels: Object.fromEntries(manifest.classes.map((c, i) => [c.name, counts[i]])),
    };
    await writePng(record.labels, { data: values, width: image.width, height: image.height, channels: 1 });
    if (opts.probabilities) {
      record.probabilities = [];
      for (let c = 0; c < k; c++) {
        const map = new Uint8Array(labels.length);
        for (let i = 0; i < labels.length; i++) map[i] = Math.round(probs[i * k + c] * 255);
        const path = join(opts.out, `${stem}_prob_${manifest.classes[c].name}.png`);
        await writePng(path, { data: map, width: image.width, height: image.height, channels: 1 });
        record.probabilities.push(path);
      }
    }
    if (opts.overlay) {
      record.overlay = join(opts.out, `${stem}_overlay.png`);
      await writePng(record.overlay, renderOverlay(image, values, manifest.classes));
    }
    const geojson = geojsonOption(opts);
    if (geojson) {
      const { writePolygonsGeoJson } = await requireTiler('--geojson');
      const polygons = await writePolygonsGeoJson(join(opts.out, `${stem}_polygons.geojson`), [values], {
        width: image.width,
        classes: manifest.classes,
        minArea: geojson.minArea,
        objectType: geojson.objectType,
      });
      Object.assign(record, polygonsRecord(polygons));
      bar.clear();
      info(out, `polygons: ${describePolygons(polygons)}`);
    }
    written.push(record);
    bar.update(index + 1);
  }
  bar.clear();
  await writeResolved(opts, [...slides, ...files], slides.length);
  info(
    out,
    `predicted ${files.length} image(s)${slides.length ? ` and ${slides.length} whole slide(s)` : ''} into ${opts.out}`,
  );
  if (opts.json) process.stdout.write(JSON.stringify({ outputs: [...slideRecords, ...written] }) + '\n');
}

async function writeResolved(opts: PredictCliOptions, inputs: string[], wholeSlides: number): Promise<void> {
  await writeFileAtomic(
    join(opts.out, 'predict.resolved.json'),
    JSON.stringify(
      {
        command: 'predict',
        model: opts.model,
        inputs,
        wholeSlides,
        out: opts.out,
        tile: opts.tile ?? null,
        overlap: opts.overlap ?? null,
        workers: opts.workers ?? null,
        batch: opts.batch ?? null,
        mpp: opts.mpp ?? null,
        tissue: opts.tissue ?? true,
        precision: opts.precision ?? 'fp32',
        resume: !!opts.resume,
        probabilities: !!opts.probabilities,
        overlay: !!opts.overlay,
        geojson: !!geojsonOption(opts),
        geojsonMinArea: opts.geojsonMinArea ?? null,
        geojsonObject: geojsonOption(opts)?.objectType ?? null,
      },
      null,
      2,
    ) + '\n',
  );
}
