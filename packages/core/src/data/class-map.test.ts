import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatasetError, InputNotFoundError, InvalidInputError, InvalidOptionError } from '../errors.js';
import {
  CLASS_PALETTE,
  IGNORE_INDEX,
  UNKNOWN_INDEX,
  backgroundClass,
  encodeMask,
  inferClassMap,
  loadClassMap,
  makeLabelLookup,
  parseClassMap,
  parseColor,
} from './class-map.js';

let dir: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(join(tmpdir(), 'tessera-class-map-'));
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const SRC = '"classes.json"';

function message(json: unknown): string {
  try {
    parseClassMap(json, SRC);
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as InvalidInputError).hint).toContain('"classes"');
    return (error as Error).message;
  }
  throw new Error('parseClassMap accepted an invalid class map');
}

describe('parseClassMap', () => {
  it('parses a valid map, keeps the class order, lower-cases colours and fills missing ones', () => {
    const map = parseClassMap(
      {
        classes: [
          { name: 'membrane', value: 0, color: '#FF0000' },
          { name: 'cell', value: 255 },
          { name: 'mito', value: 3 },
        ],
        ignore: 128,
      },
      SRC,
    );
    expect(map).toEqual({
      classes: [
        { name: 'membrane', value: 0, color: '#ff0000' },
        { name: 'cell', value: 255, color: CLASS_PALETTE[0] },
        { name: 'mito', value: 3, color: CLASS_PALETTE[1] },
      ],
      ignore: 128,
    });
    // A palette colour already used explicitly is not handed out again.
    const taken = parseClassMap(
      {
        classes: [
          { name: 'a', value: 1 },
          { name: 'b', value: 2, color: '#000000' },
        ],
      },
      SRC,
    );
    expect(taken.classes.map((c) => c.color)).toEqual([CLASS_PALETTE[1], '#000000']);
    expect('ignore' in taken).toBe(false);
  });

  it('names every kind of invalid content, quoting the value and the source', () => {
    expect(message([1, 2])).toBe(
      'Class map "classes.json": expected a JSON object with a "classes" array but received [1,2] of type array.',
    );
    expect(message({ classes: [] })).toBe(
      'Class map "classes.json": expected "classes" to be a non-empty array but received [] of type array.',
    );
    expect(message({ classes: [{ name: 'a', value: 0 }], ignored: 3 })).toBe(
      'Class map "classes.json": unknown key "ignored"; expected only "classes", "ignore".',
    );
    expect(message({ classes: ['a'] })).toBe(
      'Class map "classes.json": expected classes[0] to be an object {name, value, color?, background?} but received ' +
        '"a" of type string.',
    );
    expect(message({ classes: [{ name: 'a', value: 0, colour: '#ff0000' }] })).toBe(
      'Class map "classes.json": unknown key "colour" in classes[0]; expected only "name", "value", "color", ' +
        '"background".',
    );
    expect(message({ classes: [{ name: '', value: 0 }] })).toBe(
      'Class map "classes.json": expected classes[0].name to be a non-empty string but received "" of type string.',
    );
    expect(message({ classes: [{ name: 'a', value: 1.5 }] })).toBe(
      'Class map "classes.json": expected classes[0].value to be an integer between 0 and 255 but received ' +
        '1.5 of type number.',
    );
    expect(message({ classes: [{ name: 'a', value: 256 }] })).toContain('but received 256 of type number');
    expect(message({ classes: [{ name: 'a', value: -1 }] })).toContain('but received -1 of type number');
    expect(message({ classes: [{ name: 'a', value: '1' }] })).toContain('but received "1" of type string');
    expect(message({ classes: [{ name: 'a', value: 0, color: 'red' }] })).toBe(
      'Class map "classes.json": expected classes[0].color to be a colour "#rrggbb" but received "red" of type string.',
    );
    expect(
      message({
        classes: [
          { name: 'a', value: 0 },
          { name: 'a', value: 1 },
        ],
      }),
    ).toBe('Class map "classes.json": duplicate class name "a" in classes[0] and classes[1].');
    expect(
      message({
        classes: [
          { name: 'a', value: 7 },
          { name: 'b', value: 7 },
        ],
      }),
    ).toBe('Class map "classes.json": duplicate class value 7 in classes[0] and classes[1].');
    expect(message({ classes: [{ name: 'a', value: 0 }], ignore: 300 })).toBe(
      'Class map "classes.json": expected "ignore" to be an integer between 0 and 255 but received 300 of type number.',
    );
    expect(
      message({
        classes: [
          { name: 'a', value: 0 },
          { name: 'b', value: 5 },
        ],
        ignore: 5,
      }),
    ).toBe('Class map "classes.json": "ignore" is 5, which is also the value of class "b" (classes[1]).');
  });

  it('accepts a boolean background flag, keeps it, and refuses other values and two flagged classes', () => {
    const map = parseClassMap(
      {
        classes: [
          { name: 'tumour', value: 0, color: '#ff0000', background: false },
          { name: 'glass', value: 9, color: '#ffffff', background: true },
          { name: 'stroma', value: 3, color: '#00ff00' },
        ],
      },
      SRC,
    );
    expect(map.classes).toEqual([
      { name: 'tumour', value: 0, color: '#ff0000', background: false },
      { name: 'glass', value: 9, color: '#ffffff', background: true },
      { name: 'stroma', value: 3, color: '#00ff00' },
    ]);
    expect('background' in map.classes[2]).toBe(false); // no flag given, none written (manifests stay as they were)
    expect(message({ classes: [{ name: 'a', value: 0, background: 'yes' }] })).toBe(
      'Class map "classes.json": expected classes[0].background to be true or false but received "yes" of type string.',
    );
    expect(message({ classes: [{ name: 'a', value: 0, background: 1 }] })).toContain('but received 1 of type number');
    expect(
      message({
        classes: [
          { name: 'glass', value: 0, background: true },
          { name: 'nucleus', value: 1 },
          { name: 'empty', value: 2, background: true },
        ],
      }),
    ).toBe(
      'Class map "classes.json": classes[0] ("glass") and classes[2] ("empty") are both marked "background": true; ' +
        'expected at most one background class.',
    );
  });
});

describe('backgroundClass', () => {
  const c = (name: string, value: number, background?: boolean) => ({
    name,
    value,
    ...(background === undefined ? {} : { background }),
  });

  it('takes the flagged class, else the class named background (any case), else value 0, else none', () => {
    expect(backgroundClass([c('tumour', 0), c('glass', 9, true), c('Background', 4)])?.name).toBe('glass');
    expect(backgroundClass([c('tumour', 0), c('BACKGROUND', 4)])?.name).toBe('BACKGROUND');
    expect(backgroundClass([c('class_1', 1), c('class_0', 0)])?.name).toBe('class_0');
    expect(backgroundClass([c('a', 1), c('b', 2)])).toBeUndefined();
  });

  it('passes over classes flagged false, so value 0 can be a real class', () => {
    expect(backgroundClass([c('tumour', 0, false), c('stroma', 1)])).toBeUndefined();
    expect(backgroundClass([c('background', 0, false), c('stroma', 1)])).toBeUndefined();
    expect(backgroundClass([c('tumour', 0, false), c('empty', 7), c('Background', 5)])?.name).toBe('Background');
  });

  it('returns the same object, so callers can compare classes and find its index', () => {
    const classes = [c('nucleus', 255), c('glass', 0)];
    expect(classes.indexOf(backgroundClass(classes)!)).toBe(1);
  });
});

describe('loadClassMap', () => {
  it('reads a file, and names a missing file or broken JSON', async () => {
    const path = join(dir, 'classes.json');
    await fs.writeFile(
      path,
      JSON.stringify({
        classes: [
          { name: 'bg', value: 0 },
          { name: 'fg', value: 1 },
        ],
      }),
    );
    const map = await loadClassMap(path);
    expect(map.classes.map((c) => [c.name, c.value])).toEqual([
      ['bg', 0],
      ['fg', 1],
    ]);
    const missing = join(dir, 'missing.json');
    await expect(loadClassMap(missing)).rejects.toThrow(InputNotFoundError);
    await expect(loadClassMap(missing)).rejects.toThrow(`Class map file "${missing}" does not exist.`);
    const broken = join(dir, 'broken.json');
    await fs.writeFile(broken, '{"classes": [');
    await expect(loadClassMap(broken)).rejects.toThrow(`Class map "${broken}" is not valid JSON:`);
    const invalid = join(dir, 'invalid.json');
    await fs.writeFile(invalid, '{"classes": [{"name": "a", "value": 999}]}');
    await expect(loadClassMap(invalid)).rejects.toThrow(`Class map "${invalid}": expected classes[0].value`);
  });
});

describe('inferClassMap', () => {
  it('makes one class per distinct value, sorted by value', () => {
    const map = inferClassMap([255, 0, 0, 128]);
    expect(map.classes.map((c) => [c.name, c.value])).toEqual([
      ['class_0', 0],
      ['class_128', 128],
      ['class_255', 255],
    ]);
    expect(new Set(map.classes.map((c) => c.color)).size).toBe(3);
    expect(map.ignore).toBeUndefined();
    expect(map.classes.map((c) => c.background)).toEqual([true, undefined, undefined]);
    expect(backgroundClass(map.classes)?.name).toBe('class_0');
    // Masks without 0 have no background class.
    const noZero = inferClassMap([1, 2]);
    expect(noZero.classes.some((c) => 'background' in c)).toBe(false);
    expect(backgroundClass(noZero.classes)).toBeUndefined();
    expect(() => inferClassMap([])).toThrow(InvalidOptionError);
    expect(() => inferClassMap([1, 300])).toThrow('integers between 0 and 255 but received 300 of type number');
  });
});

describe('makeLabelLookup / encodeMask', () => {
  const map = parseClassMap(
    {
      classes: [
        { name: 'cell', value: 255 },
        { name: 'membrane', value: 0 },
      ],
      ignore: 128,
    },
    SRC,
  );

  it('maps class values to their index, ignore to -1 and others to -2', () => {
    const lookup = makeLabelLookup(map);
    expect(lookup).toBeInstanceOf(Int16Array);
    expect(lookup.length).toBe(256);
    expect(lookup[255]).toBe(0);
    expect(lookup[0]).toBe(1);
    expect(lookup[128]).toBe(IGNORE_INDEX);
    expect(lookup[1]).toBe(UNKNOWN_INDEX);
    expect(Array.from(encodeMask(Uint8Array.from([0, 255, 128, 0]), lookup, 'm.png'))).toEqual([1, 0, -1, 1]);
  });

  it('names the mask, the unknown values (at most 5) and the valid values', () => {
    const lookup = makeLabelLookup(map);
    const mask = Uint8Array.from([0, 1, 1, 2, 3, 4, 5, 6, 255]);
    let error: unknown;
    try {
      encodeMask(mask, lookup, 'masks/7.png');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DatasetError);
    expect((error as DatasetError).message).toBe(
      'Mask "masks/7.png" holds values 1 (2 pixels), 2 (1 pixel), 3 (1 pixel), 4 (1 pixel), 5 (1 pixel) ' +
        'and 1 more that the class map does not know; expected the class values 0, 255 or the ignore value 128.',
    );
    expect((error as DatasetError).hint).toContain('set one of them as "ignore"');
    expect(() => encodeMask(Uint8Array.from([9]), makeLabelLookup({ classes: map.classes }), 'a.png')).toThrow(
      'Mask "a.png" holds value 9 (1 pixel) that the class map does not know; expected the class values 0, 255.',
    );
  });
});

describe('parseColor', () => {
  it('parses #rrggbb in either case and rejects other forms', () => {
    expect(parseColor('#ff8000')).toEqual([255, 128, 0]);
    expect(parseColor('#0A0b0C')).toEqual([10, 11, 12]);
    expect(() => parseColor('#fff')).toThrow(
      'parseColor(color): expected a colour of the form "#rrggbb" but received "#fff" of type string.',
    );
    expect(() => parseColor('ff0000')).toThrow(InvalidOptionError);
  });
});
