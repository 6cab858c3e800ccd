/**
 * Class maps: which mask values are which classes, their display colours, and which value is ignored in training.
 *
 * File format (JSON):
 * ```json
 * { "classes": [ { "name": "membrane", "value": 0, "color": "#ff0000" }, { "name": "cell", "value": 255 } ],
 *   "ignore": 128 }
 * ```
 * The order of `classes` is the order of the model's output channels: class index `k` is `classes[k]`.
 * A class may carry `"background": true` (or `false`); {@link backgroundClass} says which class is the background.
 */

import { promises as fs } from 'node:fs';
import { DatasetError, InputNotFoundError, InvalidInputError, InvalidOptionError, describeValue } from '../errors.js';

/** One class: its name, the mask value that marks it, and its display colour. */
export interface ClassDef {
  /** Unique, non-empty name, e.g. `'nucleus'`. */
  name: string;
  /** The mask pixel value of this class, an integer in `0..255`. */
  value: number;
  /** Display colour `'#rrggbb'` (lower case). */
  color: string;
  /**
   * `true`: this is the background class, which overlays leave untinted and polygon outputs leave out (at most one
   * class of a map). `false`: this class is never the background, even when named `background` or of value 0.
   * Absent (the usual case, and every model folder written before the flag existed): the fallback rule of
   * {@link backgroundClass} decides.
   */
  background?: boolean;
}

/** The classes of a data set; class index `k` (model output channel `k`) is `classes[k]`. */
export interface ClassMap {
  classes: ClassDef[];
  /** Mask value whose pixels are left out of the loss and the metrics (e.g. unlabelled borders). */
  ignore?: number;
}

/**
 * Table from mask value to class index, `Int16Array` of length 256: `lookup[value]` is the class index `0..K-1`,
 * {@link IGNORE_INDEX} for the ignore value, {@link UNKNOWN_INDEX} for values that are not in the class map.
 */
export type LabelLookup = Int16Array;

/** Label of pixels that are ignored (class map `ignore` value, or outside the image after augmentation). */
export const IGNORE_INDEX = -1;
/** Lookup entry of mask values that the class map does not know. */
export const UNKNOWN_INDEX = -2;

/**
 * Fixed palette of distinct colours assigned, in order, to classes without a `color` (colours already taken by
 * other classes are skipped). The first is black, so that background (value 0) usually stays dark.
 */
export const CLASS_PALETTE: readonly string[] = [
  '#000000',
  '#e6194b',
  '#3cb44b',
  '#ffe119',
  '#4363d8',
  '#f58231',
  '#911eb4',
  '#46f0f0',
  '#f032e6',
  '#bcf60c',
  '#fabebe',
  '#008080',
  '#e6beff',
  '#9a6324',
  '#fffac8',
  '#800000',
  '#aaffc3',
  '#808000',
  '#ffd8b1',
  '#000075',
  '#808080',
  '#ffffff',
];

const COLOR_PATTERN = /^#[0-9a-fA-F]{6}$/;
const CLASS_KEYS = ['name', 'value', 'color', 'background'];
const TOP_KEYS = ['classes', 'ignore'];
const FORMAT_HINT =
  'A class map looks like {"classes": [{"name": "glass", "value": 0, "background": true}, {"name": "nucleus", ' +
  '"value": 1, "color": "#ff0000"}], "ignore": 255}: unique names, unique integer values 0..255, optional "#rrggbb" ' +
  'colours, "background": true on at most one class, and an optional ignore value that is no class value.';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isByte(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 255;
}

/**
 * Parses a colour `'#rrggbb'` (either case) into `[r, g, b]` bytes.
 * @throws {@link InvalidOptionError} when `color` is not of that form.
 * @example
 * parseColor('#ff8000'); // [255, 128, 0]
 */
export function parseColor(color: string): [number, number, number] {
  if (typeof color !== 'string' || !COLOR_PATTERN.test(color)) {
    throw new InvalidOptionError(
      `parseColor(color): expected a colour of the form "#rrggbb" but received ${describeValue(color)}.`,
      'Write colours as a hash and six hexadecimal digits, e.g. "#ff0000" for red.',
    );
  }
  return [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16)) as [number, number, number];
}

/**
 * Validates a parsed class map file and fills in missing colours from {@link CLASS_PALETTE}.
 * @param json - The parsed JSON.
 * @param source - Where it came from (a file path, or e.g. `'manifest.json classMap'`), named in errors.
 * @throws {@link InvalidInputError} quoting the bad value and `source` for: not an object, unknown keys, missing or
 * empty `classes`, a name that is not a non-empty string, a value that is not an integer in `0..255`, a malformed
 * colour, a `background` flag that is not `true` or `false`, `"background": true` on two classes, duplicate names or
 * values, or an `ignore` that is invalid or equal to a class value.
 * @example
 * parseClassMap({ classes: [{ name: 'membrane', value: 0 }, { name: 'cell', value: 255 }] }, 'classes.json');
 */
export function parseClassMap(json: unknown, source: string): ClassMap {
  const fail = (what: string): never => {
    throw new InvalidInputError(`Class map ${source}: ${what}.`, FORMAT_HINT);
  };
  if (!isRecord(json)) fail(`expected a JSON object with a "classes" array but received ${describeValue(json)}`);
  const top = json as Record<string, unknown>;
  for (const key of Object.keys(top)) {
    if (!TOP_KEYS.includes(key))
      fail(`unknown key "${key}"; expected only ${TOP_KEYS.map((k) => `"${k}"`).join(', ')}`);
  }
  const rawClasses = top.classes;
  if (!Array.isArray(rawClasses) || rawClasses.length === 0) {
    fail(`expected "classes" to be a non-empty array but received ${describeValue(rawClasses)}`);
  }
  const entries = rawClasses as unknown[];
  const names = new Map<string, number>();
  const values = new Map<number, number>();
  const parsed: { name: string; value: number; color?: string; background?: boolean }[] = [];
  let flagged: number | undefined;
  entries.forEach((entry, i) => {
    const at = `classes[${i}]`;
    if (!isRecord(entry))
      fail(`expected ${at} to be an object {name, value, color?, background?} but received ${describeValue(entry)}`);
    const e = entry as Record<string, unknown>;
    for (const key of Object.keys(e)) {
      if (!CLASS_KEYS.includes(key)) {
        fail(`unknown key "${key}" in ${at}; expected only ${CLASS_KEYS.map((k) => `"${k}"`).join(', ')}`);
      }
    }
    if (typeof e.name !== 'string' || e.name.trim() === '') {
      fail(`expected ${at}.name to be a non-empty string but received ${describeValue(e.name)}`);
    }
    const name = e.name as string;
    if (!isByte(e.value)) {
      fail(`expected ${at}.value to be an integer between 0 and 255 but received ${describeValue(e.value)}`);
    }
    const value = e.value as number;
    if (e.color !== undefined && (typeof e.color !== 'string' || !COLOR_PATTERN.test(e.color))) {
      fail(`expected ${at}.color to be a colour "#rrggbb" but received ${describeValue(e.color)}`);
    }
    if (e.background !== undefined && typeof e.background !== 'boolean') {
      fail(`expected ${at}.background to be true or false but received ${describeValue(e.background)}`);
    }
    if (e.background === true) {
      if (flagged !== undefined) {
        fail(
          `classes[${flagged}] ("${parsed[flagged].name}") and ${at} ("${name}") are both marked "background": true; ` +
            'expected at most one background class',
        );
      }
      flagged = i;
    }
    const previousName = names.get(name);
    if (previousName !== undefined) fail(`duplicate class name "${name}" in classes[${previousName}] and ${at}`);
    const previousValue = values.get(value);
    if (previousValue !== undefined) fail(`duplicate class value ${value} in classes[${previousValue}] and ${at}`);
    names.set(name, i);
    values.set(value, i);
    parsed.push({
      name,
      value,
      color: typeof e.color === 'string' ? e.color.toLowerCase() : undefined,
      ...(typeof e.background === 'boolean' ? { background: e.background } : {}),
    });
  });
  const ignore = top.ignore;
  if (ignore !== undefined) {
    if (!isByte(ignore))
      fail(`expected "ignore" to be an integer between 0 and 255 but received ${describeValue(ignore)}`);
    const clash = values.get(ignore as number);
    if (clash !== undefined) {
      fail(
        `"ignore" is ${ignore as number}, which is also the value of class "${parsed[clash].name}" (classes[${clash}])`,
      );
    }
  }
  const taken = new Set(parsed.map((c) => c.color).filter((c): c is string => c !== undefined));
  const free = CLASS_PALETTE.filter((c) => !taken.has(c));
  let next = 0;
  const classes: ClassDef[] = parsed.map(({ name, value, color, background }) => ({
    name,
    value,
    color: color ?? (free.length > 0 ? free[next++ % free.length] : CLASS_PALETTE[next++ % CLASS_PALETTE.length]),
    ...(background !== undefined ? { background } : {}),
  }));
  return ignore === undefined ? { classes } : { classes, ignore: ignore as number };
}

/**
 * Reads and validates a class map JSON file (see {@link parseClassMap}).
 * @throws {@link InputNotFoundError} when the file is missing or unreadable.
 * @throws {@link InvalidInputError} when it is not valid JSON or not a valid class map.
 * @example
 * const classMap = await loadClassMap('data/classes.json');
 */
export async function loadClassMap(path: string): Promise<ClassMap> {
  let text: string;
  try {
    text = await fs.readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new InputNotFoundError(
      code === 'ENOENT'
        ? `Class map file "${path}" does not exist.`
        : `Class map file "${path}" cannot be read (${(error as Error).message}).`,
      'Check the path, or leave the class map out to infer the classes from the mask values.',
      error,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new InvalidInputError(
      `Class map "${path}" is not valid JSON: ${(error as Error).message}.`,
      FORMAT_HINT,
      error,
    );
  }
  return parseClassMap(json, `"${path}"`);
}

/**
 * Builds a class map from the mask values found in a data set: each distinct value becomes a class `class_<value>`,
 * in increasing value order, with palette colours. When the masks hold 0, `class_0` is marked `background: true`.
 * @throws {@link InvalidOptionError} when a value is not an integer in `0..255` or there are none.
 * @example
 * inferClassMap([255, 0, 0]); // classes class_0 (value 0, the background) and class_255 (value 255)
 */
export function inferClassMap(values: Iterable<number>): ClassMap {
  const distinct = [...new Set(values)].sort((a, b) => a - b);
  const bad = distinct.find((v) => !isByte(v));
  if (bad !== undefined || distinct.length === 0) {
    throw new InvalidOptionError(
      bad !== undefined
        ? `inferClassMap(values): expected mask values that are integers between 0 and 255 but received ` +
          `${describeValue(bad)}.`
        : 'inferClassMap(values): expected at least one mask value but received none.',
      'Pass the values collected from the masks (collectMaskValues).',
    );
  }
  return parseClassMap(
    {
      classes: distinct.map((value) => ({
        name: `class_${value}`,
        value,
        ...(value === 0 ? { background: true } : {}),
      })),
    },
    '(inferred)',
  );
}

/** What {@link backgroundClass} needs of a class. */
export interface BackgroundCandidate {
  name: string;
  value: number;
  background?: boolean;
}

/**
 * The background class of a class map: the one rule that overlays (left untinted), GeoJSON polygons (left out unless
 * asked for by name) and skipped whole-slide tiles (given this class) follow.
 *
 * 1. the class marked `background: true`, if one is;
 * 2. else the class named `background` (any case), if there is one;
 * 3. else the class of value 0, if there is one;
 * 4. else none.
 *
 * A class marked `background: false` is passed over by steps 2 and 3, so a map whose value 0 is a real class can say
 * so. Model folders written before the flag existed follow steps 2 to 4.
 * @param classes - The classes, in class-index order (e.g. `manifest.classes`).
 * @returns The background class (the same object), or `undefined` when there is none.
 * @example
 * backgroundClass([{ name: 'class_0', value: 0 }, { name: 'class_1', value: 1 }]); // class_0 (value 0)
 * backgroundClass([{ name: 'tumour', value: 0 }, { name: 'glass', value: 9, background: true }]); // glass
 */
export function backgroundClass<T extends BackgroundCandidate>(classes: readonly T[]): T | undefined {
  const flagged = classes.find((c) => c.background === true);
  if (flagged) return flagged;
  const candidates = classes.filter((c) => c.background !== false);
  return candidates.find((c) => c.name.toLowerCase() === 'background') ?? candidates.find((c) => c.value === 0);
}

/**
 * Builds the mask value → class index table of a class map.
 * @returns `Int16Array` of length 256: class index `0..K-1`, {@link IGNORE_INDEX} (`-1`) for the ignore value,
 * {@link UNKNOWN_INDEX} (`-2`) for every other value.
 * @example
 * const lookup = makeLabelLookup(classMap);
 * lookup[255]; // 1 when classes[1].value is 255
 */
export function makeLabelLookup(classMap: ClassMap): LabelLookup {
  const lookup = new Int16Array(256).fill(UNKNOWN_INDEX);
  classMap.classes.forEach((c, k) => {
    lookup[c.value] = k;
  });
  if (classMap.ignore !== undefined) lookup[classMap.ignore] = IGNORE_INDEX;
  return lookup;
}

/**
 * Turns mask values into class indices.
 * @param mask - Mask values, shape `[height, width]` (or any flat layout).
 * @param lookup - From {@link makeLabelLookup}.
 * @param source - The mask file, named in errors.
 * @returns Class indices of the same length, `-1` where the mask holds the ignore value.
 * @throws {@link DatasetError} naming `source`, up to 5 unknown values (with their pixel counts) and the valid ones.
 * @example
 * const labels = encodeMask(mask.data, makeLabelLookup(classMap), 'masks/0.png');
 */
export function encodeMask(mask: Uint8Array, lookup: LabelLookup, source: string): Int16Array {
  const out = new Int16Array(mask.length);
  let unknown = false;
  for (let i = 0; i < mask.length; i++) {
    const k = lookup[mask[i]];
    if (k === UNKNOWN_INDEX) unknown = true;
    out[i] = k;
  }
  if (!unknown) return out;
  const counts = new Map<number, number>();
  for (let i = 0; i < mask.length; i++) {
    if (lookup[mask[i]] === UNKNOWN_INDEX) counts.set(mask[i], (counts.get(mask[i]) ?? 0) + 1);
  }
  const bad = [...counts.keys()].sort((a, b) => a - b);
  const shown = bad
    .slice(0, 5)
    .map((v) => `${v} (${counts.get(v)} pixel${counts.get(v) === 1 ? '' : 's'})`)
    .join(', ');
  const more = bad.length > 5 ? ` and ${bad.length - 5} more` : '';
  const classValues: number[] = [];
  let ignore: number | undefined;
  for (let v = 0; v < 256; v++) {
    if (lookup[v] >= 0) classValues.push(v);
    else if (lookup[v] === IGNORE_INDEX) ignore = v;
  }
  throw new DatasetError(
    `Mask "${source}" holds value${bad.length > 1 ? 's' : ''} ${shown}${more} that the class map does not know; ` +
      `expected the class values ${classValues.join(', ')}${ignore === undefined ? '' : ` or the ignore value ${ignore}`}.`,
    'Add these values to the class map as classes, or set one of them as "ignore" in the class map; ' +
      'check also that the mask was not saved with lossy compression (JPEG) or resized with interpolation.',
  );
}
