/**
 * What the viewer shows: the slide, the other slides of the same predictions folder, and for each the files
 * `tessera predict` wrote for it (`<stem>_labels.tif|png`, `<stem>_prob_<class>.tif|png`,
 * `<stem>_polygons.geojson`, `<stem>_areas.json`, `<stem>_report.html`), and the classes with their colours.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, isAbsolute, join, resolve } from 'node:path';
import {
  backgroundClass,
  CLASS_PALETTE,
  imageStem,
  parseClassMap,
  parseColor,
  readManifest,
  type ClassDef,
  type ModelManifest,
} from '@tessera/core';
import { ViewerInputError, ViewerPredictionsError } from './errors.js';

/** A class as the viewer draws it. */
export interface ViewerClass {
  /** Position in the class list (the model's output channel); bit of the `classes` mask in tile URLs. */
  index: number;
  name: string;
  /** Value of the class in the label map. */
  value: number;
  /** `#rrggbb`. */
  color: string;
  rgb: [number, number, number];
  /** The background class (core's `backgroundClass`): never tinted, left out of "% of tissue". */
  background: boolean;
}

/** One slide of the viewer and its prediction files (paths, or `null` when absent). */
export interface SlideEntry {
  /** Identifier in URLs: the position in the list. */
  id: string;
  /** File name of the slide. */
  name: string;
  stem: string;
  slidePath: string;
  labelsPath: string | null;
  probabilities: { name: string; path: string }[];
  polygonsPath: string | null;
  areasPath: string | null;
  reportPath: string | null;
}

/** The slides and classes of a viewer session. */
export interface Catalog {
  entries: SlideEntry[];
  /** The classes, or `null` when neither a model nor the predictions name them (then found in the label map). */
  classes: ViewerClass[] | null;
  /** Where the classes came from, for the page and the log. */
  classesFrom: string;
  /** Things the user should know (a model folder named by the predictions that is gone...). */
  warnings: string[];
}

/** Options of {@link buildCatalog}. */
export interface CatalogOptions {
  /** The slide (or ordinary image) to open first. */
  slide: string;
  /** Folder of `tessera predict --out`. */
  predictions?: string;
  /** Manifest of `--model`: its classes and colours win over the predictions' model. */
  manifest?: ModelManifest;
  /** Folder relative paths are resolved from (default `process.cwd()`). */
  cwd?: string;
}

const exists = async (path: string) => (await stat(path).catch(() => null)) !== null;

/** The viewer's classes from class definitions (colours filled in, the background marked by core's rule). */
export function viewerClasses(
  classes: readonly Pick<ClassDef, 'name' | 'value' | 'background'>[],
  colors?: (string | undefined)[],
): ViewerClass[] {
  const background = backgroundClass(classes);
  const taken = new Set(colors?.filter(Boolean));
  const palette = CLASS_PALETTE.filter((c) => !taken.has(c));
  let next = 0;
  return classes.map((c, index) => {
    const color = colors?.[index] ?? palette[next++ % palette.length];
    return {
      index,
      name: c.name,
      value: c.value,
      color,
      rgb: parseColor(color),
      background: c === background,
    };
  });
}

function fromManifest(manifest: ModelManifest): ViewerClass[] {
  return viewerClasses(
    manifest.classes,
    manifest.classes.map((c) => c.color),
  );
}

/**
 * The stems `tessera predict` names a slide's outputs by: the file name without its extension, and for OME-TIFF
 * without `.ome` either (`x.ome.tif` gives `x_labels.tif` for whole slides, `x.ome_labels.png` for images).
 */
function stemsOf(path: string): string[] {
  const stem = imageStem(path);
  const slideStem = stem.replace(/\.ome$/i, '');
  return slideStem === stem ? [stem] : [slideStem, stem];
}

/** Files in the predictions folder of a slide: those of the first of its stems that has a label map. */
function predictionFiles(dir: string, files: Set<string>, path: string) {
  const stems = stemsOf(path);
  const stem = stems.find((s) => files.has(`${s}_labels.tif`) || files.has(`${s}_labels.png`)) ?? stems[0];
  const pick = (...names: string[]) => {
    const name = names.find((n) => files.has(n));
    return name === undefined ? null : join(dir, name);
  };
  const prefix = `${stem}_prob_`;
  const probabilities = [...files]
    .filter((f) => f.startsWith(prefix) && /\.(tif|png)$/.test(f))
    .sort()
    .map((f) => ({ name: f.slice(prefix.length, -extname(f).length), path: join(dir, f) }));
  return {
    labelsPath: pick(`${stem}_labels.tif`, `${stem}_labels.png`),
    probabilities,
    polygonsPath: pick(`${stem}_polygons.geojson`),
    areasPath: pick(`${stem}_areas.json`),
    reportPath: pick(`${stem}_report.html`),
  };
}

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8'));
  } catch (error) {
    throw new ViewerPredictionsError(
      `"${path}" of the predictions could not be read as JSON: ${(error as Error).message}.`,
      'Predict the slide again with tessera predict, which rewrites the file.',
      error,
    );
  }
}

/** The first of `candidates` that exists. */
async function firstExisting(candidates: string[]): Promise<string | null> {
  for (const c of candidates) if (await exists(c)) return c;
  return null;
}

/**
 * Finds the slides and prediction files to show: `slide` first, then every other input listed in the predictions
 * folder's `predict.resolved.json` that has a label map there. Classes and colours come from `manifest` (`--model`),
 * else from the model folder the predictions name, else from `<stem>_areas.json` (palette colours).
 * @throws {@link ViewerInputError} (exit code 4) when the slide, the folder or the slide's label map in it is missing.
 * @example
 * const catalog = await buildCatalog({ slide: 'CMU-1.svs', predictions: 'slides' });
 */
export async function buildCatalog(options: CatalogOptions): Promise<Catalog> {
  const cwd = options.cwd ?? process.cwd();
  const slidePath = resolve(cwd, options.slide);
  if (!(await exists(slidePath))) {
    throw new ViewerInputError(
      `Slide "${options.slide}" not found (looked for ${slidePath}).`,
      'Give the path of a slide or image file (SVS, OME-TIFF, pyramidal TIFF, DICOM folder, PNG, JPEG).',
    );
  }
  const warnings: string[] = [];
  const entry = (path: string, id: number, files: ReturnType<typeof predictionFiles> | null): SlideEntry => ({
    id: String(id),
    name: basename(path),
    stem: stemsOf(path)[0],
    slidePath: path,
    labelsPath: files?.labelsPath ?? null,
    probabilities: files?.probabilities ?? [],
    polygonsPath: files?.polygonsPath ?? null,
    areasPath: files?.areasPath ?? null,
    reportPath: files?.reportPath ?? null,
  });
  let classes = options.manifest ? fromManifest(options.manifest) : null;
  let classesFrom = options.manifest ? 'the model (--model)' : '';
  if (!options.predictions) {
    return { entries: [entry(slidePath, 0, null)], classes, classesFrom, warnings };
  }
  const dir = resolve(cwd, options.predictions);
  const info = await stat(dir).catch(() => null);
  if (!info?.isDirectory()) {
    throw new ViewerInputError(
      `Predictions folder "${options.predictions}" not found (looked for ${dir}).`,
      'Give the --out folder of a "tessera predict" run, or leave --predictions out to view the slide alone.',
    );
  }
  const files = new Set(await readdir(dir));
  const stem = stemsOf(slidePath)[0];
  const first = predictionFiles(dir, files, slidePath);
  if (!first.labelsPath) {
    const stems = [...files].filter((f) => /_labels\.(tif|png)$/.test(f)).map((f) => f.replace(/_labels\.\w+$/, ''));
    throw new ViewerInputError(
      `No label map of "${basename(slidePath)}" in the predictions folder "${options.predictions}": expected ` +
        `${stem}_labels.tif (whole slides) or ${stem}_labels.png (images) but ` +
        (stems.length ? `it holds the label maps of ${stems.map((s) => `"${s}"`).join(', ')}.` : 'it holds none.'),
      `Predict the slide first: tessera predict --model <model> "${options.slide}" --out "${options.predictions}".`,
    );
  }
  const entries = [entry(slidePath, 0, first)];
  const resolvedPath = join(dir, 'predict.resolved.json');
  const resolved = files.has('predict.resolved.json')
    ? ((await readJson(resolvedPath)) as { inputs?: unknown; model?: unknown })
    : {};
  const bases = [cwd, dir, dirname(dir)];
  const place = (p: string) => (isAbsolute(p) ? [p] : bases.map((b) => resolve(b, p)));
  const seen = new Set([slidePath]);
  const inputs = Array.isArray(resolved.inputs)
    ? resolved.inputs.filter((p): p is string => typeof p === 'string')
    : [];
  for (const input of inputs) {
    const found = predictionFiles(dir, files, input);
    if (!found.labelsPath) continue;
    const path = await firstExisting(place(input));
    if (!path) {
      warnings.push(`"${input}" (listed in ${resolvedPath}) was not found: it is left out of the slide list.`);
      continue;
    }
    if (seen.has(path)) continue;
    seen.add(path);
    entries.push(entry(path, entries.length, found));
  }
  if (!classes && typeof resolved.model === 'string') {
    const model = await firstExisting(place(resolved.model).map((p) => join(p, 'manifest.json')));
    if (model) {
      classes = fromManifest(await readManifest(dirname(model)));
      classesFrom = `the model of the predictions (${dirname(model)})`;
    } else {
      warnings.push(
        `The model folder "${resolved.model}" named in ${resolvedPath} was not found: class colours are the ` +
          "palette's. Give it with --model for its colours.",
      );
    }
  }
  if (!classes && first.areasPath) {
    const areas = (await readJson(first.areasPath)) as { classes?: { name: string; value: number }[] };
    try {
      const map = parseClassMap(
        { classes: (areas.classes ?? []).map((c) => ({ name: c.name, value: c.value })) },
        first.areasPath,
      );
      classes = viewerClasses(
        map.classes,
        map.classes.map((c) => c.color),
      );
      classesFrom = `${basename(first.areasPath)} (palette colours)`;
    } catch (error) {
      warnings.push(`${first.areasPath}: ${(error as Error).message}`);
    }
  }
  return { entries, classes, classesFrom, warnings };
}
