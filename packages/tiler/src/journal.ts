/**
 * The journal of a slide prediction's partial work folder: the settings that shape the output bits and how far the
 * rows got, so that an interrupted run continues where it stopped, and only with the same settings.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { partialDamaged, partialMismatch, TilerOptionError } from './errors.js';

/** Where a run starts: the stripe, and the finished rows at its top. */
export interface ResumePoint {
  stripe: number;
  row: number;
}

/** A sink's `start` result as a resume point, checked against the output. */
export function toResumePoint(value: unknown, stripes: number, height: number): ResumePoint {
  const point = value ?? { stripe: 0, row: 0 };
  const { stripe, row } = typeof point === 'number' ? { stripe: 0, row: point } : (point as ResumePoint);
  const within = (n: number, max: number) => Number.isInteger(n) && n >= 0 && n <= max;
  if (!(within(stripe, stripes - 1) && within(row, height))) {
    throw new TilerOptionError(
      `Expected the first unfinished stripe (0 to ${stripes - 1}) and row (0 to ${height}) but received ` +
        `${JSON.stringify(point)}.`,
    );
  }
  return { stripe, row };
}

/** Output pixels finished before `point`. */
export function resumedPixels(point: ResumePoint, stripes: { width: number }[], height: number): number {
  let pixels = point.row * stripes[point.stripe].width;
  for (let s = 0; s < point.stripe; s++) pixels += stripes[s].width * height;
  return pixels;
}

/** Least time between two journal entries of a slide prediction (each syncs the maps to the disk). */
export const JOURNAL_INTERVAL_MS = 1000;

/** What a partial work folder holds besides the maps: the settings it was made with and how far it got. */
export interface PartialJournal {
  format: 'tessera-slide-partial';
  version: 2;
  settings: PartialSettings;
  /** The stripe being written and its rows finished and flushed to the maps (earlier stripes are complete). */
  stripe: number;
  rows: number;
  /** Pixels per class of everything finished. */
  counts: number[];
}

/** Everything that shapes the output bits; a partial work folder is resumed only when all of it matches. */
export interface PartialSettings {
  slide: string;
  slideBytes: number;
  slideModified: string;
  modelWeights: string;
  modelTopology: string;
  classes: string;
  level: number;
  scale: number;
  mpp: number | null;
  width: number;
  height: number;
  tile: number;
  overlap: number;
  batchSize: number;
  blend: string;
  tissue: boolean;
  engine: string;
  probabilities: boolean;
  stripeWidth: number;
}

/** How each setting is named in messages. */
const SETTING_NAMES: Record<keyof PartialSettings, string> = {
  slide: 'slide',
  slideBytes: 'slide size (bytes)',
  slideModified: 'slide modification time',
  modelWeights: 'model weights (sha256)',
  modelTopology: 'model topology (sha256)',
  classes: 'classes',
  level: 'level',
  scale: 'scale',
  mpp: 'µm/px',
  width: 'output width',
  height: 'output height',
  tile: 'tile',
  overlap: 'overlap',
  batchSize: 'batchSize',
  blend: 'blend',
  tissue: 'tissue detection',
  engine: 'engine',
  probabilities: 'probabilities',
  stripeWidth: 'stripeWidth',
};

/** The settings that are options of {@link predictSlide}, named by their option name. */
const OPTION_SETTINGS: (keyof PartialSettings)[] = [
  'tile',
  'overlap',
  'batchSize',
  'blend',
  'probabilities',
  'stripeWidth',
];

/** The partial work folder of a slide's prediction into `out`: `<out>/.<stem>.partial`. */
export function partialWorkDir(out: string, stem: string): string {
  return join(out, `.${stem}.partial`);
}

/**
 * The journal of a partial work folder made with `settings`, `null` when there is none to resume.
 * @throws {@link PartialWorkError} when the folder was made with other settings or its journal is unreadable.
 */
export async function readJournal(
  dir: string,
  settings: PartialSettings,
  numClasses: number,
  stripes: { width: number }[],
): Promise<PartialJournal | null> {
  let text: string;
  try {
    text = await readFile(join(dir, 'journal.json'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw partialDamaged(dir, `its journal.json cannot be read (${(error as Error).message})`);
  }
  let journal: PartialJournal;
  try {
    journal = JSON.parse(text) as PartialJournal;
  } catch (error) {
    throw partialDamaged(dir, `its journal.json is not JSON (${(error as Error).message})`);
  }
  if (journal?.format !== 'tessera-slide-partial' || journal.version !== 2 || typeof journal.settings !== 'object') {
    throw partialDamaged(dir, 'its journal.json is not a version 2 journal of tessera predict');
  }
  for (const key of Object.keys(settings) as (keyof PartialSettings)[]) {
    if (JSON.stringify(journal.settings[key]) !== JSON.stringify(settings[key])) {
      const option = OPTION_SETTINGS.includes(key) ? key : undefined; // named as the option, e.g. --overlap in the CLI
      throw partialMismatch(dir, SETTING_NAMES[key], journal.settings[key], settings[key], option);
    }
  }
  const { stripe, rows, counts } = journal;
  const valid =
    Number.isInteger(stripe) &&
    stripe >= 0 &&
    stripe < stripes.length &&
    Number.isInteger(rows) &&
    rows >= 0 &&
    rows <= settings.height &&
    Array.isArray(counts) &&
    counts.length === numClasses &&
    counts.reduce((sum, n) => sum + n, 0) === resumedPixels({ stripe, row: rows }, stripes, settings.height);
  if (!valid) {
    throw partialDamaged(
      dir,
      `its journal.json says ${String(rows)} rows of stripe ${String(stripe)} with pixel counts that do not add up`,
    );
  }
  return journal;
}
