import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dicomTileGrid, isDicomHeader, openDicomSlide } from './dicom.js';
import { SlideFormatError } from './errors.js';
import { readGridRegion } from './tiles.js';

const DATA = process.env.TESSERA_DATA ?? join(import.meta.dirname, '../../../../shared/data');
const FIXTURES = join(DATA, 'slides/wsi-openslide-python-fixtures');
const BOXES_0 = join(FIXTURES, 'boxes_0.dcm');
const BOXES_1 = join(FIXTURES, 'boxes_1.dcm');

const WSI = '1.2.840.10008.5.1.4.1.1.77.1.6';
const JPEG_BASELINE = '1.2.840.10008.1.2.4.50';
const J2K_LOSSLESS = '1.2.840.10008.1.2.4.90';
const HTJ2K_LOSSLESS = '1.2.840.10008.1.2.4.201';

const hasOpj = spawnSync('opj_compress', ['-h'], { stdio: 'ignore' }).error === undefined;
const require = createRequire(import.meta.url);

// ---------------------------------------------------------------------------------------------------------------
// A small DICOM writer: explicit VR little endian data sets, the file meta group, encapsulated frames.

interface El {
  tag: number;
  vr: string;
  data?: Buffer;
  items?: El[][];
}

const LONG_VRS = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT']);

function pad(bytes: Buffer, fill: number): Buffer {
  return bytes.length % 2 ? Buffer.concat([bytes, Buffer.from([fill])]) : bytes;
}
const str = (tag: number, vr: string, value: string): El => ({
  tag,
  vr,
  data: pad(Buffer.from(value, 'latin1'), vr === 'UI' ? 0 : 0x20),
});
const us = (tag: number, value: number): El => {
  const data = Buffer.alloc(2);
  data.writeUInt16LE(value);
  return { tag, vr: 'US', data };
};
const ul = (tag: number, value: number): El => {
  const data = Buffer.alloc(4);
  data.writeUInt32LE(value);
  return { tag, vr: 'UL', data };
};
const sl = (tag: number, value: number): El => {
  const data = Buffer.alloc(4);
  data.writeInt32LE(value);
  return { tag, vr: 'SL', data };
};
const sq = (tag: number, ...items: El[][]): El => ({ tag, vr: 'SQ', items });

function itemHeader(tag: number, length: number): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt16LE(tag >>> 16, 0);
  header.writeUInt16LE(tag & 0xffff, 2);
  header.writeUInt32LE(length, 4);
  return header;
}

function encode(elements: El[]): Buffer {
  const parts: Buffer[] = [];
  for (const el of [...elements].sort((a, b) => a.tag - b.tag)) {
    const data =
      el.vr === 'SQ'
        ? Buffer.concat(
            el.items!.map((item) => {
              const body = encode(item);
              return Buffer.concat([itemHeader(0xfffee000, body.length), body]);
            }),
          )
        : el.data!;
    const long = LONG_VRS.has(el.vr);
    const head = Buffer.alloc(long ? 12 : 8);
    head.writeUInt16LE(el.tag >>> 16, 0);
    head.writeUInt16LE(el.tag & 0xffff, 2);
    head.write(el.vr, 4, 'latin1');
    if (long) head.writeUInt32LE(data.length, 8);
    else head.writeUInt16LE(data.length, 6);
    parts.push(head, data);
  }
  return Buffer.concat(parts);
}

interface Wsi {
  series?: string;
  sopClass?: string;
  modality?: string;
  flavor?: string;
  syntax?: string;
  photometric?: string;
  samples?: number;
  bits?: number;
  total: [number, number];
  tile: [number, number];
  /** Fragments of each frame. */
  frames: Buffer[][];
  /** Write a Basic Offset Table (else an empty one). */
  bot?: boolean;
  /** Write an Extended Offset Table (one fragment per frame). */
  eot?: boolean;
  /** TILED_SPARSE: 1-based pixel position of each frame, and its Z offset (focal plane). */
  positions?: [number, number, string?][];
  spacing?: string;
  manufacturer?: string;
  /** NumberOfFrames, if not the number of frames written. */
  declaredFrames?: number;
  /** Leave out the pixel data (annotations, reports). */
  noPixels?: boolean;
}

let instanceNumber = 0;

/** A DICOM Part 10 file of one whole-slide instance (or, with `sopClass`, of another kind). */
function dicomFile(o: Wsi): Buffer {
  const frames = o.frames.map((fragments) => fragments.map((f) => pad(f, 0)));
  const frameBytes = frames.map((fragments) => fragments.reduce((n, f) => n + 8 + f.length, 0));
  const starts = frameBytes.map((_, i) => frameBytes.slice(0, i).reduce((a, b) => a + b, 0));
  const bot = Buffer.alloc(o.bot ? 4 * frames.length : 0);
  if (o.bot) starts.forEach((s, i) => bot.writeUInt32LE(s, 4 * i));
  const pixelItems = Buffer.concat([
    itemHeader(0xfffee000, bot.length),
    bot,
    ...frames.flatMap((fragments) => fragments.flatMap((f) => [itemHeader(0xfffee000, f.length), f])),
    itemHeader(0xfffee0dd, 0),
  ]);
  const samples = o.samples ?? 3;
  const elements: El[] = [
    str(0x00080008, 'CS', `DERIVED\\PRIMARY\\${o.flavor ?? 'VOLUME'}\\NONE`),
    str(0x00080016, 'UI', o.sopClass ?? WSI),
    str(0x00080018, 'UI', `1.2.3.4.${++instanceNumber}`),
    str(0x00080060, 'CS', o.modality ?? 'SM'),
    str(0x00080070, 'LO', o.manufacturer ?? 'Tessera Test Scanner'),
    str(0x0020000d, 'UI', '1.2.3.1'),
    str(0x0020000e, 'UI', o.series ?? '1.2.3.1.1'),
    str(0x00209311, 'CS', o.positions ? 'TILED_SPARSE' : 'TILED_FULL'),
    us(0x00280002, samples),
    str(0x00280004, 'CS', o.photometric ?? (samples === 1 ? 'MONOCHROME2' : 'YBR_FULL_422')),
    str(0x00280008, 'IS', String(o.declaredFrames ?? frames.length)),
    us(0x00280010, o.tile[1]),
    us(0x00280011, o.tile[0]),
    us(0x00280100, o.bits ?? 8),
    us(0x00280101, o.bits ?? 8),
    us(0x00280102, (o.bits ?? 8) - 1),
    us(0x00280103, 0),
    str(0x00400512, 'LO', 'SLIDE_1'),
    ul(0x00480006, o.total[0]),
    ul(0x00480007, o.total[1]),
    sq(0x52009229, [sq(0x00289110, [str(0x00280030, 'DS', o.spacing ?? '0.00025\\0.00025')])]),
  ];
  if (samples === 3) elements.push(us(0x00280006, 0));
  if (o.positions) {
    elements.push(
      sq(
        0x52009230,
        ...o.positions.map(([column, row, z]) => [
          sq(0x0048021a, [
            str(0x0040072a, 'DS', '0'),
            str(0x0040073a, 'DS', '0'),
            str(0x0040074a, 'DS', z ?? '0'),
            sl(0x0048021e, column),
            sl(0x0048021f, row),
          ]),
        ]),
      ),
    );
  }
  if (o.eot) {
    const offsets = Buffer.alloc(8 * frames.length);
    const lengths = Buffer.alloc(8 * frames.length);
    frames.forEach((fragments, i) => {
      offsets.writeBigUInt64LE(BigInt(starts[i]), 8 * i);
      // The frame's own length: odd ones are padded in their item, not here.
      lengths.writeBigUInt64LE(BigInt(o.frames[i][0].length), 8 * i);
    });
    elements.push({ tag: 0x7fe00001, vr: 'OV', data: offsets }, { tag: 0x7fe00002, vr: 'OV', data: lengths });
  }
  const dataSet = encode(elements);
  const pixelHead = Buffer.alloc(12);
  pixelHead.writeUInt16LE(0x7fe0, 0);
  pixelHead.writeUInt16LE(0x0010, 2);
  pixelHead.write('OB', 4, 'latin1');
  pixelHead.writeUInt32LE(0xffffffff, 8);
  const meta = encode([
    { tag: 0x00020001, vr: 'OB', data: Buffer.from([0, 1]) },
    str(0x00020002, 'UI', o.sopClass ?? WSI),
    str(0x00020003, 'UI', '1.2.3.4.5'),
    str(0x00020010, 'UI', o.syntax ?? JPEG_BASELINE),
    str(0x00020012, 'UI', '1.2.3.9'),
  ]);
  return Buffer.concat([
    Buffer.alloc(128),
    Buffer.from('DICM', 'latin1'),
    encode([ul(0x00020000, meta.length)]),
    meta,
    dataSet,
    ...(o.noPixels ? [] : [pixelHead, pixelItems]),
  ]);
}

// ---------------------------------------------------------------------------------------------------------------
// Pixels: references, tiles, differences.

interface Raw {
  data: Buffer;
  width: number;
  height: number;
}

async function rgb(input: string | sharp.Sharp): Promise<Raw> {
  const image = typeof input === 'string' ? sharp(input) : input;
  const { data, info } = await image.removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Tile `(column, row)` of an RGB image at full tile size, padded with white. */
function tileOf(image: Raw, column: number, row: number, tw: number, th: number): Buffer {
  const out = Buffer.alloc(tw * th * 3, 255);
  for (let y = 0; y < th && row * th + y < image.height; y++) {
    const x0 = column * tw;
    const x1 = Math.min(image.width, x0 + tw);
    const src = ((row * th + y) * image.width + x0) * 3;
    image.data.copy(out, y * tw * 3, src, src + (x1 - x0) * 3);
  }
  return out;
}

function jpegTile(tile: Buffer, size: number, chroma: '4:4:4' | '4:2:0'): Promise<Buffer> {
  return sharp(tile, { raw: { width: size, height: size, channels: 3 } })
    .jpeg({ quality: 95, chromaSubsampling: chroma })
    .toBuffer();
}

/** Frames of every tile of an image, in TILED_FULL order. */
async function tiledFrames(image: Raw, size: number, encodeTile: (tile: Buffer) => Promise<Buffer>) {
  const frames: Buffer[][] = [];
  for (let row = 0; row < Math.ceil(image.height / size); row++) {
    for (let column = 0; column < Math.ceil(image.width / size); column++) {
      frames.push([await encodeTile(tileOf(image, column, row, size, size))]);
    }
  }
  return frames;
}

/** Max and mean absolute difference per channel of two RGB buffers. */
function difference(a: Uint8Array, b: Uint8Array): { max: number[]; mean: number[] } {
  expect(a.length).toBe(b.length);
  const max = [0, 0, 0];
  const sum = [0, 0, 0];
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max[i % 3] = Math.max(max[i % 3], d);
    sum[i % 3] += d;
  }
  return { max, mean: sum.map((s) => s / (a.length / 3)) };
}

function report(name: string, diff: { max: number[]; mean: number[] }): void {
  console.log(
    `${name}: max |d| per channel ${diff.max.join('/')}, mean ${diff.mean.map((m) => m.toFixed(3)).join('/')}`,
  );
}

let tmp: string;
let boxes: Raw;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tessera-dicom-'));
  boxes = await rgb(join(FIXTURES, 'boxes.png'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

async function folder(name: string, files: Record<string, Buffer>): Promise<string> {
  const dir = join(tmp, name);
  await mkdir(dir, { recursive: true });
  for (const [file, bytes] of Object.entries(files)) await writeFile(join(dir, file), bytes);
  return dir;
}

// ---------------------------------------------------------------------------------------------------------------

describe('isDicomHeader', () => {
  it('recognises the DICM preamble and nothing else', async () => {
    expect(isDicomHeader((await readFile(BOXES_0)).subarray(0, 132))).toBe(true);
    expect(isDicomHeader((await readFile(join(FIXTURES, 'boxes.tiff'))).subarray(0, 132))).toBe(false);
    expect(isDicomHeader((await readFile(BOXES_0)).subarray(0, 131))).toBe(false);
  });
});

describe('the openslide-python DICOM fixture (boxes_0.dcm, boxes_1.dcm)', () => {
  // Values verified with pydicom 2.3.1 (Debian python3-pydicom): boxes_0.dcm is a VOLUME instance, JPEG baseline
  // (1.2.840.10008.1.2.4.50), TotalPixelMatrix 16x16, Columns/Rows 64x64, 1 frame of 564 bytes (FF D8 ... FF D9),
  // PixelSpacing .000499\.000499 mm, Manufacturer "Leica Biosystems", SamplesPerPixel 3, RGB; boxes_1.dcm is the
  // THUMBNAIL of the same series (16x16, Explicit VR Little Endian). OpenSlide reads one level and a "thumbnail".
  const expected = {
    format: 'dicom',
    vendor: 'leica biosystems',
    width: 16,
    height: 16,
    channels: 3,
    mppSource: 'dicom',
    associated: [{ name: 'thumbnail', width: 16, height: 16 }],
    bytes: 5502,
    levels: [
      {
        index: 0,
        width: 16,
        height: 16,
        downsample: 1,
        tileWidth: 64,
        tileHeight: 64,
        compression: null,
        page: 0,
        subifd: -1,
        decoder: 'tiles',
        file: BOXES_0,
      },
    ],
  };

  it('opens the file and the folder as one slide of one level, with the thumbnail associated', async () => {
    for (const path of [BOXES_0, FIXTURES]) {
      const slide = await openDicomSlide(path);
      expect(slide).toMatchObject({ ...expected, path });
      expect(slide.mpp!.x).toBeCloseTo(0.499, 9);
      expect(slide.mpp!.y).toBeCloseTo(0.499, 9);
    }
  });

  it('points the grid at the JPEG codestream of the one frame', async () => {
    const grid = await dicomTileGrid(BOXES_0, 0);
    expect(grid).toMatchObject({
      file: BOXES_0,
      width: 16,
      height: 16,
      tileWidth: 64,
      tileHeight: 64,
      columns: 1,
      rows: 1,
      dicomItems: true,
      codec: { kind: 'jpeg', photometric: 'rgb' },
      samples: 3,
      fill: 255,
      encoding: 'DICOM JPEG baseline',
      level: 0,
    });
    expect([...grid.offsets]).toEqual([4922]);
    expect([...grid.lengths]).toEqual([8 + 564]);
    const bytes = await readFile(BOXES_0);
    const at = grid.offsets[0];
    expect([...bytes.subarray(at, at + 4)]).toEqual([0xfe, 0xff, 0x00, 0xe0]); // item (FFFE,E000)
    expect(bytes.readUInt32LE(at + 4)).toBe(564);
    expect([...bytes.subarray(at + 8, at + 10)]).toEqual([0xff, 0xd8]);
    expect([...bytes.subarray(at + 8 + 562, at + 8 + 564)]).toEqual([0xff, 0xd9]);
  });

  it('decodes level 0 as libvips decodes small.svs, the TIFF it was converted from', async () => {
    const pixels = await readGridRegion(await dicomTileGrid(BOXES_0, 0), 0, 0, 16, 16);
    const reference = await rgb(join(FIXTURES, 'small.svs'));
    expect([reference.width, reference.height]).toEqual([16, 16]);
    const diff = difference(pixels, reference.data);
    report('boxes_0.dcm level 0 vs small.svs (libvips)', diff);
    // The same JPEG tile decoded by libjpeg-turbo twice: identical.
    expect(diff.max).toEqual([0, 0, 0]);
  });

  it('reads the uncompressed thumbnail (native pixel data) as pydicom does', async () => {
    const grid = await dicomTileGrid(BOXES_1, 1);
    expect(grid).toMatchObject({ codec: { kind: 'raw' }, encoding: 'DICOM uncompressed', tileWidth: 16, columns: 1 });
    const pixels = await readGridRegion(grid, 0, 0, 16, 16);
    // The first pixels as pydicom 2.3.1 reads them (ds.pixel_array of boxes_1.dcm).
    expect(Array.from(pixels.subarray(0, 9))).toEqual([246, 246, 246, 237, 237, 245, 255, 247, 243]);
    // A thumbnail of the same 16x16 slide as level 0: close to it.
    const level0 = await readGridRegion(await dicomTileGrid(BOXES_0, 0), 0, 0, 16, 16);
    let sum = 0;
    for (let i = 0; i < pixels.length; i++) sum += Math.abs(pixels[i] - level0[i]);
    expect(sum / pixels.length).toBeLessThan(10);
  });
});

describe('a synthetic three-level JPEG series made from boxes.png', () => {
  let dir: string;
  let level1: Raw;
  let level2: Raw;

  beforeAll(async () => {
    level1 = await rgb(sharp(join(FIXTURES, 'boxes.png')).resize(150, 125, { fit: 'fill' }));
    level2 = await rgb(sharp(join(FIXTURES, 'boxes.png')).resize(75, 62, { fit: 'fill' }));
    const common = { tile: [64, 64] as [number, number], spacing: '0.00025\\0.00026' };
    dir = await folder('series', {
      // Names out of size order: the levels are sorted by size, not by name.
      'a-level2.dcm': dicomFile({
        ...common,
        total: [75, 62],
        frames: await tiledFrames(level2, 64, (t) => jpegTile(t, 64, '4:2:0')),
      }),
      'b-level0.dcm': dicomFile({
        ...common,
        total: [300, 250],
        photometric: 'YBR_FULL',
        bot: true,
        frames: await tiledFrames(boxes, 64, (t) => jpegTile(t, 64, '4:4:4')),
      }),
      'c-level1.dcm': dicomFile({
        ...common,
        total: [150, 125],
        frames: await tiledFrames(level1, 64, (t) => jpegTile(t, 64, '4:4:4')),
      }),
      'd-label.dcm': dicomFile({
        ...common,
        flavor: 'LABEL',
        total: [40, 30],
        tile: [40, 30],
        frames: [
          [
            await sharp({ create: { width: 40, height: 30, channels: 3, background: '#fff' } })
              .jpeg()
              .toBuffer(),
          ],
        ],
      }),
      'e-overview.dcm': dicomFile({
        ...common,
        flavor: 'OVERVIEW',
        total: [60, 20],
        tile: [60, 20],
        frames: [
          [
            await sharp({ create: { width: 60, height: 20, channels: 3, background: '#eee' } })
              .jpeg()
              .toBuffer(),
          ],
        ],
      }),
      'notes.txt': Buffer.from('not DICOM: skipped\n'),
    });
  });

  it('opens as one slide of three levels, sorted by size, with label and macro', async () => {
    for (const path of [dir, join(dir, 'c-level1.dcm')]) {
      const slide = await openDicomSlide(path);
      expect(slide.path).toBe(path);
      expect(slide.format).toBe('dicom');
      expect(slide.vendor).toBe('tessera test scanner');
      expect([slide.width, slide.height, slide.channels]).toEqual([300, 250, 3]);
      expect(slide.levels.map((l) => [l.index, l.width, l.height, l.tileWidth, l.tileHeight])).toEqual([
        [0, 300, 250, 64, 64],
        [1, 150, 125, 64, 64],
        [2, 75, 62, 64, 64],
      ]);
      expect(slide.levels.map((l) => l.file)).toEqual(
        ['b-level0.dcm', 'c-level1.dcm', 'a-level2.dcm'].map((f) => join(dir, f)),
      );
      // As boxes.tiff: (300/75 + 250/62) / 2 = 4.016.
      expect(slide.levels.map((l) => l.downsample.toFixed(3))).toEqual(['1.000', '2.000', '4.016']);
      expect(slide.levels.every((l) => l.decoder === 'tiles' && l.compression === null)).toBe(true);
      // PixelSpacing is row spacing \ column spacing, in mm.
      expect(slide.mpp!.y).toBeCloseTo(0.25, 9);
      expect(slide.mpp!.x).toBeCloseTo(0.26, 9);
      expect(slide.mppSource).toBe('dicom');
      expect(slide.associated).toEqual([
        { name: 'label', width: 40, height: 30 },
        { name: 'macro', width: 60, height: 20 },
      ]);
      const sizes = await Promise.all(slide.levels.map(async (l) => (await readFile(l.file!)).length));
      expect(slide.bytes).toBe(sizes.reduce((a, b) => a + b, 0));
    }
  });

  it('reads level 0 as boxes.png, and levels 1 and 2 as boxes.png downsampled, within JPEG q95 error', async () => {
    const slide = await openDicomSlide(dir);
    const references = [boxes, level1, level2];
    for (const level of slide.levels) {
      const grid = await dicomTileGrid(level.file!, level.index);
      expect([grid.columns, grid.rows]).toEqual([Math.ceil(level.width / 64), Math.ceil(level.height / 64)]);
      expect(grid.codec).toEqual({ kind: 'jpeg', photometric: 'ycbcr' });
      const pixels = await readGridRegion(grid, 0, 0, level.width, level.height);
      const diff = difference(pixels, references[level.index].data);
      report(`synthetic JPEG q95 level ${level.index} vs reference`, diff);
      // Quality 95, measured max |d| per channel (R/G/B) and mean: level 0 (4:4:4) 11/8/15, 0.15/0.03/0.43;
      // level 1 (4:4:4) 12/10/17, 0.32/0.18/0.66; level 2 (4:2:0) 92/56/158, 4.33/2.76/8.11, which is the error of
      // 4:2:0 itself at the boxes' saturated one-pixel edges (libjpeg encoding and decoding the whole 75x62 image
      // gives the same numbers), so level 2 is also checked exactly against its tiles decoded one by one below.
      const [meanBound, maxBound] = level.index < 2 ? [1, 24] : [10, 170];
      for (const m of diff.mean) expect(m).toBeLessThan(meanBound);
      for (const m of diff.max) expect(m).toBeLessThan(maxBound);
      if (level.index === 2) {
        // The 4:2:0 error is the encoding's: the level equals its tiles decoded one by one by libjpeg (sharp).
        const bytes = await readFile(level.file!);
        for (let t = 0; t < grid.columns * grid.rows; t++) {
          const jpeg = bytes.subarray(grid.offsets[t] + 8, grid.offsets[t] + grid.lengths[t]);
          const tile = await sharp(jpeg).raw().toBuffer();
          const [c, r] = [t % grid.columns, Math.floor(t / grid.columns)];
          const w = Math.min(64, level.width - c * 64);
          for (let y = 0; y < Math.min(64, level.height - r * 64); y++) {
            const got = pixels.subarray(
              ((r * 64 + y) * level.width + c * 64) * 3,
              ((r * 64 + y) * level.width + c * 64 + w) * 3,
            );
            expect(Buffer.from(got).equals(tile.subarray(y * 64 * 3, (y * 64 + w) * 3)), `tile ${t} row ${y}`).toBe(
              true,
            );
          }
        }
      }
    }
    // A region across four tiles equals the same part of the whole level.
    const grid = await dicomTileGrid(slide.levels[0].file!, 0);
    const whole = await readGridRegion(grid, 0, 0, 300, 250);
    const part = await readGridRegion(grid, 50, 40, 30, 50);
    for (let y = 0; y < 50; y++) {
      const row = whole.subarray(((40 + y) * 300 + 50) * 3, ((40 + y) * 300 + 80) * 3);
      expect(Buffer.from(part.subarray(y * 90, (y + 1) * 90)).equals(Buffer.from(row))).toBe(true);
    }
  });

  it('takes the series of the file given and ignores other series beside it, but refuses a folder of two', async () => {
    await writeFile(
      join(dir, 'f-other-series.dcm'),
      dicomFile({
        series: '9.9.9',
        total: [64, 64],
        tile: [64, 64],
        frames: [[await jpegTile(tileOf(boxes, 0, 0, 64, 64), 64, '4:4:4')]],
      }),
    );
    try {
      expect((await openDicomSlide(join(dir, 'b-level0.dcm'))).levels).toHaveLength(3);
      expect((await openDicomSlide(join(dir, 'f-other-series.dcm'))).levels.map((l) => l.width)).toEqual([64]);
      const error = await openDicomSlide(dir).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SlideFormatError);
      expect((error as SlideFormatError).message).toMatch(
        /series" holds 2 DICOM series, 2 of them slides; expected one whole-slide series\. Series: 1\.2\.3\.1\.1 \(5 file\(s\), WSI\); 9\.9\.9 \(1 file\(s\), WSI\)\./,
      );
      expect((error as SlideFormatError).hint).toMatch(/Pass one \.dcm file of the slide/);
    } finally {
      await rm(join(dir, 'f-other-series.dcm'));
    }
  });
});

describe('frame layouts and offset tables', () => {
  const colours = [
    [200, 30, 40],
    [30, 180, 60],
    [40, 60, 220],
    [10, 10, 10],
  ];
  const solid = (c: number[]) => {
    const tile = Buffer.alloc(64 * 64 * 3);
    for (let i = 0; i < 64 * 64; i++) tile.set(c, i * 3);
    return jpegTile(tile, 64, '4:4:4');
  };

  it('places TILED_SPARSE frames by position, keeps the first focal plane, and fills a missing tile with 255', async () => {
    const frames = [
      [await solid(colours[0])],
      [await solid(colours[1])],
      [await solid(colours[2])],
      [await solid(colours[3])],
    ];
    const file = join(await folder('sparse', {}), 'sparse.dcm');
    await writeFile(
      file,
      dicomFile({
        total: [128, 128],
        tile: [64, 64],
        frames,
        // Tile (1,0), then (0,1), then (0,0); the fourth frame is tile (1,1) of another focal plane: not used.
        positions: [
          [65, 1],
          [1, 65],
          [1, 1],
          [65, 65, '0.002'],
        ],
      }),
    );
    const grid = await dicomTileGrid(file, 0);
    expect([grid.columns, grid.rows]).toEqual([2, 2]);
    expect(grid.lengths[3]).toBe(0);
    expect([...grid.lengths].slice(0, 3).every((n) => n > 8)).toBe(true);
    const pixels = await readGridRegion(grid, 0, 0, 128, 128);
    const at = (x: number, y: number) => [...pixels.subarray((y * 128 + x) * 3, (y * 128 + x) * 3 + 3)];
    const near = (got: number[], want: number[]) =>
      got.forEach((v, k) => expect(Math.abs(v - want[k])).toBeLessThanOrEqual(3));
    near(at(10, 10), colours[2]); // tile (0,0) = third frame
    near(at(100, 10), colours[0]); // tile (1,0) = first frame
    near(at(10, 100), colours[1]); // tile (0,1) = second frame
    for (let y = 64; y < 128; y++) for (let x = 64; x < 128; x++) expect(at(x, y)).toEqual([255, 255, 255]);
  });

  it('reads a header larger than the first 64 KiB read (2,500 sparse frames)', async () => {
    const tiny = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#c81e28' } })
      .jpeg({ quality: 95, chromaSubsampling: '4:4:4' })
      .toBuffer();
    // Frames listed bottom-up, so that tile i is frame 2499 - i.
    const positions: [number, number][] = [];
    for (let i = 2499; i >= 0; i--) positions.push([(i % 50) * 8 + 1, Math.floor(i / 50) * 8 + 1]);
    const bytes = dicomFile({ total: [400, 400], tile: [8, 8], frames: positions.map(() => [tiny]), positions });
    const file = join(await folder('many', {}), 'many.dcm');
    await writeFile(file, bytes);
    const grid = await dicomTileGrid(file, 0);
    expect([grid.columns, grid.rows]).toEqual([50, 50]);
    const frameBytes = 8 + tiny.length + (tiny.length % 2);
    const first = bytes.length - 8 - 2500 * frameBytes; // after the offset table item, before the delimiter
    expect(first).toBeGreaterThan(128 * 1024);
    expect([...grid.lengths].every((n) => n === frameBytes)).toBe(true);
    for (const i of [0, 1, 50, 2499]) expect(grid.offsets[i]).toBe(first + (2499 - i) * frameBytes);
  });

  it('reads a frame split over two fragments without offset table, with a Basic and with an Extended Offset Table', async () => {
    const left = await jpegTile(tileOf(boxes, 1, 1, 64, 64), 64, '4:4:4');
    const encoded = await jpegTile(tileOf(boxes, 2, 1, 64, 64), 64, '4:4:4');
    // An odd length (a one-byte COM marker added when needed), so that its fragment is padded.
    const comment = Buffer.from([0xff, 0xfe, 0x00, 0x03, 0x41]);
    const right = encoded.length % 2 ? encoded : Buffer.concat([encoded.subarray(0, 2), comment, encoded.subarray(2)]);
    expect(right.length % 2).toBe(1);
    const direct = await Promise.all([left, right].map((j) => sharp(j).raw().toBuffer()));
    const dir = await folder('split', {
      // Frame 0 in two fragments (the first 100 bytes, then the rest): 3 fragments for 2 frames.
      'none.dcm': dicomFile({
        total: [128, 64],
        tile: [64, 64],
        frames: [[left.subarray(0, 100), left.subarray(100)], [right]],
      }),
      'bot.dcm': dicomFile({
        total: [128, 64],
        tile: [64, 64],
        bot: true,
        // Three bytes after the EOI marker: the fragment does not end a codestream, only the table tells.
        frames: [[left.subarray(0, 100), Buffer.concat([left.subarray(100), Buffer.alloc(3)])], [right]],
      }),
      'eot.dcm': dicomFile({ total: [128, 64], tile: [64, 64], eot: true, frames: [[left], [right]] }),
      'one-per-frame.dcm': dicomFile({ total: [128, 64], tile: [64, 64], frames: [[left], [right]] }),
    });
    const padded = (n: number) => n + (n % 2);
    const file = (name: string) => join(dir, name);
    const grids = {
      none: await dicomTileGrid(file('none.dcm'), 0),
      bot: await dicomTileGrid(file('bot.dcm'), 0),
      eot: await dicomTileGrid(file('eot.dcm'), 0),
      single: await dicomTileGrid(file('one-per-frame.dcm'), 0),
    };
    const split = [8 + 100 + 8 + padded(left.length - 100), 8 + padded(right.length)];
    const whole = [8 + padded(left.length), 8 + padded(right.length)];
    expect([...grids.none.lengths]).toEqual(split);
    expect([...grids.bot.lengths]).toEqual([8 + 100 + 8 + padded(left.length - 100 + 3), split[1]]);
    expect([...grids.eot.lengths]).toEqual(whole);
    expect([...grids.single.lengths]).toEqual(whole);
    for (const [name, grid] of Object.entries(grids)) {
      const bytes = await readFile(grid.file);
      for (let i = 0; i < 2; i++) {
        expect([...bytes.subarray(grid.offsets[i] + 8, grid.offsets[i] + 10)], `${name} frame ${i}`).toEqual([
          0xff, 0xd8,
        ]);
      }
      const pixels = await readGridRegion(grid, 0, 0, 128, 64);
      for (let y = 0; y < 64; y++) {
        for (let i = 0; i < 2; i++) {
          const got = Buffer.from(pixels.subarray((y * 128 + 64 * i) * 3, (y * 128 + 64 * i + 64) * 3));
          expect(got.equals(direct[i].subarray(y * 64 * 3, (y + 1) * 64 * 3)), `${name} tile ${i} row ${y}`).toBe(true);
        }
      }
    }
  });
});

describe('JPEG 2000 and HTJ2K frames', () => {
  it.skipIf(!hasOpj)('reads lossless JPEG 2000 frames (opj_compress, YBR_RCT) exactly as boxes.png', async () => {
    const work = await folder('j2k-work', {});
    const frames = await tiledFrames(boxes, 64, async (tile) => {
      const ppm = join(work, 'tile.ppm');
      const j2k = join(work, 'tile.j2k');
      await writeFile(ppm, Buffer.concat([Buffer.from('P6\n64 64\n255\n'), tile]));
      const run = spawnSync('opj_compress', ['-i', ppm, '-o', j2k], { encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
      return readFile(j2k);
    });
    const file = join(await folder('j2k', {}), 'j2k.dcm');
    await writeFile(
      file,
      dicomFile({ total: [300, 250], tile: [64, 64], syntax: J2K_LOSSLESS, photometric: 'YBR_RCT', frames }),
    );
    const slide = await openDicomSlide(file);
    expect(slide.levels.map((l) => [l.width, l.height])).toEqual([[300, 250]]);
    const grid = await dicomTileGrid(file, 0);
    expect(grid.codec).toEqual({ kind: 'jpeg2000', colour: 'rgb' });
    expect(grid.encoding).toBe('DICOM JPEG 2000');
    const bytes = await readFile(file);
    expect([...bytes.subarray(grid.offsets[7] + 8, grid.offsets[7] + 12)]).toEqual([0xff, 0x4f, 0xff, 0x51]); // SOC, SIZ
    const pixels = await readGridRegion(grid, 0, 0, 300, 250);
    const diff = difference(pixels, boxes.data);
    report('synthetic lossless JPEG 2000 vs boxes.png', diff);
    expect(diff.max).toEqual([0, 0, 0]);
  });

  const openjph = require('@cornerstonejs/codec-openjph') as () => Promise<Record<string, new () => unknown>>;
  it('reads lossless HTJ2K frames (OpenJPH encoder, YBR_RCT) exactly as boxes.png', async () => {
    const codec = await openjph();
    if (!codec.HTJ2KEncoder) throw new Error('@cornerstonejs/codec-openjph has no HTJ2KEncoder');
    interface Encoder {
      getDecodedBuffer(info: object): Uint8Array;
      setQuality(lossless: boolean, step: number): void;
      encode(): void;
      getEncodedBuffer(): Uint8Array;
      delete(): void;
    }
    const frames = await tiledFrames(boxes, 64, async (tile) => {
      const encoder = new codec.HTJ2KEncoder() as Encoder;
      try {
        const info = {
          width: 64,
          height: 64,
          bitsPerSample: 8,
          componentCount: 3,
          isSigned: false,
          isUsingColorTransform: true,
        };
        encoder.getDecodedBuffer(info).set(tile);
        encoder.setQuality(true, 0);
        encoder.encode();
        return Buffer.from(encoder.getEncodedBuffer());
      } finally {
        encoder.delete();
      }
    });
    const file = join(await folder('htj2k', {}), 'htj2k.dcm');
    await writeFile(
      file,
      dicomFile({ total: [300, 250], tile: [64, 64], syntax: HTJ2K_LOSSLESS, photometric: 'YBR_RCT', frames }),
    );
    const grid = await dicomTileGrid(file, 0);
    expect(grid.codec).toEqual({ kind: 'htj2k' });
    expect(grid.encoding).toBe('DICOM HTJ2K');
    const pixels = await readGridRegion(grid, 0, 0, 300, 250);
    const diff = difference(pixels, boxes.data);
    report('synthetic lossless HTJ2K vs boxes.png', diff);
    expect(diff.max).toEqual([0, 0, 0]);
  });
});

describe('refusals', () => {
  let frame: Buffer;
  beforeAll(async () => {
    frame = await jpegTile(tileOf(boxes, 0, 0, 64, 64), 64, '4:4:4');
  });
  const level = (extra: Partial<Wsi> = {}) =>
    dicomFile({ total: [64, 64], tile: [64, 64], frames: [[frame]], ...extra });

  async function failure(promise: Promise<unknown>): Promise<SlideFormatError> {
    const error = await promise.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SlideFormatError);
    return error as SlideFormatError;
  }

  it('says a CT file is a DICOM file, and what it is', async () => {
    const file = join(await folder('ct', {}), 'ct.dcm');
    await writeFile(file, level({ sopClass: '1.2.840.10008.5.1.4.1.1.2', modality: 'CT' }));
    const expected =
      /ct\.dcm" is a DICOM file, but a CT Image \(SOP Class UID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2, modality CT\); expected a VL Whole Slide Microscopy Image \(SOP Class UID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.77\.1\.6\)\./;
    expect((await failure(openDicomSlide(file))).message).toMatch(expected);
    expect((await failure(dicomTileGrid(file, 0))).message).toMatch(expected);
    expect((await failure(openDicomSlide(join(tmp, 'ct')))).message).toMatch(expected);
    const odd = join(await folder('odd', {}), 'odd.dcm');
    await writeFile(odd, level({ sopClass: '1.2.3.999', modality: 'OT' }));
    expect((await failure(openDicomSlide(odd))).message).toMatch(
      /odd\.dcm" is a DICOM file, but an instance of an unrecognised SOP class \(SOP Class UID 1\.2\.3\.999, modality OT\); expected a VL Whole Slide/,
    );
  });

  it('names an unsupported transfer syntax and lists the supported ones', async () => {
    const file = join(await folder('jpegls', {}), 'jpegls.dcm');
    await writeFile(file, level({ syntax: '1.2.840.10008.1.2.4.80' }));
    const error = await failure(openDicomSlide(file));
    expect(error.message).toMatch(
      /jpegls\.dcm" \(level 0\) stores its frames as JPEG-LS Lossless \(transfer syntax 1\.2\.840\.10008\.1\.2\.4\.80\); expected one of 1\.2\.840\.10008\.1\.2\.4\.50 \(JPEG Baseline \(Process 1\)\), .*1\.2\.840\.10008\.1\.2\.4\.90 .*1\.2\.840\.10008\.1\.2\.4\.203 \(High-Throughput JPEG 2000\), .*\(uncompressed\)\)\./,
    );
    expect(error.hint).toMatch(/cannot decode this encoding/);
    expect((await failure(dicomTileGrid(file, 3))).message).toMatch(
      /\(level 3\) stores its frames as JPEG-LS Lossless/,
    );
  });

  it('refuses 16-bit samples, and a series whose instances disagree', async () => {
    const sixteen = join(await folder('sixteen', {}), 'sixteen.dcm');
    await writeFile(sixteen, level({ bits: 16 }));
    expect((await failure(openDicomSlide(sixteen))).message).toMatch(
      /sixteen\.dcm" \(level 0\): expected 8 bits allocated per sample \(BitsAllocated, 0028,0100\) but the file has 16\./,
    );
    const dir = await folder('disagree', {
      'a.dcm': level({ total: [128, 128], frames: [[frame], [frame], [frame], [frame]] }),
      'b.dcm': level({ samples: 1 }),
    });
    const error = await failure(openDicomSlide(dir));
    expect(error.message).toMatch(
      /its instances disagree: ".*a\.dcm" \(level 0\) has SamplesPerPixel 3 but ".*b\.dcm" \(level 1\) has 1;/,
    );
    const twins = await folder('twins', { 'a.dcm': level(), 'b.dcm': level() });
    expect((await failure(openDicomSlide(twins))).message).toMatch(
      /are both VOLUME levels of 64x64; expected one instance per level/,
    );
  });

  it('opens a folder of one slide series beside series that are not slides (CT, annotations without pixels)', async () => {
    const dir = await folder('with-ct', {
      'slide.dcm': level(),
      'ct.dcm': level({ sopClass: '1.2.840.10008.5.1.4.1.1.2', modality: 'CT', series: '7.7.7' }),
      'annotations.dcm': level({ sopClass: '1.2.840.10008.5.1.4.1.1.91.1', series: '8.8.8', noPixels: true }),
    });
    const slide = await openDicomSlide(dir);
    expect(slide.levels.map((l) => l.file)).toEqual([join(dir, 'slide.dcm')]);
    const two = await folder('two-ct', {
      'a.dcm': level({ sopClass: '1.2.840.10008.5.1.4.1.1.2', modality: 'CT', series: '7.7.7' }),
      'b.dcm': level({ sopClass: '1.2.840.10008.5.1.4.1.1.2', modality: 'CT', series: '7.7.8' }),
    });
    expect((await failure(openDicomSlide(two))).message).toMatch(
      /two-ct" holds 2 DICOM series; expected one whole-slide series\. Series: 7\.7\.7 \(1 file\(s\), CT Image\); 7\.7\.8 \(1 file\(s\), CT Image\)\./,
    );
  });

  it('refuses a folder without DICOM files, one with only a label, and a file cut short', async () => {
    const empty = await folder('empty', { 'readme.txt': Buffer.from('nothing here') });
    expect((await failure(openDicomSlide(empty))).message).toMatch(
      /empty" holds no DICOM file \(none starts with the DICM preamble\)/,
    );
    const labels = await folder('labels', { 'label.dcm': level({ flavor: 'LABEL' }) });
    expect((await failure(openDicomSlide(labels))).message).toMatch(
      /holds no whole-slide instance of ImageType VOLUME or THUMBNAIL \(value 3 of 0008,0008\); found label\.dcm: LABEL\./,
    );
    const whole = level();
    const cut = join(await folder('cut', {}), 'cut.dcm');
    await writeFile(cut, whole.subarray(0, whole.length - 200));
    const error = await failure(dicomTileGrid(cut, 0));
    expect(error.code).toBe('E_SLIDE_TRUNCATED');
    expect(error.message).toMatch(
      /cut\.dcm" is truncated: level 0 has tile data up to byte \d+ but the file has \d+ bytes/,
    );
    const missing = join(await folder('missing-frame', {}), 'missing-frame.dcm');
    await writeFile(missing, level({ total: [128, 64], declaredFrames: 2 }));
    expect((await failure(dicomTileGrid(missing, 0))).message).toMatch(
      /missing-frame\.dcm" could not be read as a whole-slide image: expected 2 codestreams \(NumberOfFrames\) in its pixel data but its 1 fragments form 1, and no offset table says where the frames start\./,
    );
    // A damaged DICOM file beside the one asked for is skipped; in the folder asked for it is reported.
    const dir = await folder('damaged-sibling', { 'slide.dcm': level(), 'broken.dcm': whole.subarray(0, 300) });
    expect((await openDicomSlide(join(dir, 'slide.dcm'))).levels).toHaveLength(1);
    expect((await failure(openDicomSlide(dir))).message).toMatch(
      /broken\.dcm" could not be read as a whole-slide image: expected a DICOM header but dicom-parser failed/,
    );
  });
});
