/**
 * A seeded, structure-aware mutator of slide files. Each case takes one seed file (TIFF, BigTIFF, SVS, OME-TIFF, PNG
 * or DICOM) and applies one to three mutations chosen by a seeded random generator; the same seed number always gives
 * the same bytes. TIFF mutations know the layout ({@link parseTiff}): they set one entry's value, count, type or
 * offset, point tile offsets and byte counts outside the file or at each other, loop IFD chains and SubIFDs, and put
 * odd values in Compression, Photometric, SampleFormat and friends; PNG mutations change IHDR fields and chunk
 * lengths (with valid CRCs, so the decoder gets past the checksum); every file can be bit-flipped or truncated. Two
 * generators build decompression bombs from scratch: a 1.2 MB TIFF of 100000 x 100000 pixels whose tiles all point at
 * the same bytes, and a few hundred bytes declaring 2^31-1 x 2^31-1 pixels.
 */
import { deflateSync } from 'node:zlib';
import { buildTiledTiff, parseTiff, readValues, writeField, writePointer, writeValue } from './tiff-layout.mjs';

/** A seeded generator of numbers in [0, 1) (mulberry32). */
export function randomGenerator(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n) => Math.floor(next() * n);
  return { next, int, pick: (list) => list[int(list.length)], chance: (p) => next() < p };
}

/** The kind of a file from its first bytes. */
export function kindOf(bytes) {
  if (bytes.length >= 4 && (bytes.toString('latin1', 0, 2) === 'II' || bytes.toString('latin1', 0, 2) === 'MM'))
    return 'tiff';
  if (bytes.length >= 8 && bytes.readUInt32BE(0) === 0x89504e47) return 'png';
  if (bytes.length >= 132 && bytes.toString('latin1', 128, 132) === 'DICM') return 'dicom';
  return 'other';
}

const HUGE = [0xffffffff, 0x7fffffff, 100000, 65535, 1e9, 0x80000000];
const ODD_VALUES = {
  259: [0, 2, 3, 4, 6, 9, 32771, 34661, 34712, 34892, 50000, 50001, 65000, 65535, 33003, 33005], // Compression
  262: [0, 1, 3, 4, 5, 8, 9, 10, 32844, 32845, 65535], // Photometric
  339: [0, 2, 3, 4, 5, 6], // SampleFormat
  258: [0, 1, 4, 12, 16, 32, 64], // BitsPerSample
  277: [0, 1, 2, 4, 5, 255], // SamplesPerPixel
  284: [0, 2, 3], // PlanarConfiguration
  317: [0, 2, 3, 9], // Predictor
  322: [0, 1, 15, 16, 17, 100000], // TileWidth
  323: [0, 1, 16, 100000], // TileLength
  278: [0, 1, 0xffffffff], // RowsPerStrip
  530: [0, 3, 8], // YCbCrSubSampling
  254: [1, 9, 0xffffffff], // NewSubfileType
};
/** Tags whose absence matters most. */
const KEY_TAGS = [256, 257, 258, 259, 262, 277, 322, 323, 324, 325, 273, 279, 347, 330];

/** Flips `n` random bits; in `range` when given. */
function flipBits(bytes, rng, n, range = [0, bytes.length]) {
  const [from, to] = range;
  if (to <= from) return;
  for (let i = 0; i < n; i++) {
    const at = from + rng.int(to - from);
    bytes[at] ^= 1 << rng.int(8);
  }
}

/** The structural byte range of a TIFF: header to the end of the last IFD and its out-of-line values. */
function structureRange(layout, length) {
  let start = length;
  let end = 0;
  for (const ifd of layout.ifds) {
    start = Math.min(start, ifd.offset);
    end = Math.max(end, ifd.nextAt + 8);
    for (const e of ifd.entries) {
      if (e.inline || e.tag === 324 || e.tag === 273) continue; // values, not pixel data
      start = Math.min(start, e.valueAt);
      end = Math.max(end, e.valueAt + Math.min(e.bytes, 4096));
    }
  }
  return [Math.max(0, Math.min(start, length)), Math.min(end, length)];
}

function entries(layout, filter = () => true) {
  const all = [];
  for (const ifd of layout.ifds) for (const e of ifd.entries) if (filter(e, ifd)) all.push({ ifd, entry: e });
  return all;
}

/** TIFF mutations: each returns a description, or `null` when it does not apply to this file. */
const TIFF_OPS = {
  'bit-flip-structure'(bytes, layout, rng) {
    const n = 1 + rng.int(8);
    flipBits(bytes, rng, n, structureRange(layout, bytes.length));
    return `${n} bits flipped in the IFDs`;
  },
  'entry-value'(bytes, layout, rng) {
    const all = entries(layout, (e) => [1, 3, 4, 13, 16, 18].includes(e.type));
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const value = rng.chance(0.3) ? 0 : rng.pick(HUGE);
    const index = entry.count > 1 && rng.chance(0.5) ? rng.int(entry.count) : 0;
    return writeValue(bytes, layout, entry, index, value) ? `tag ${entry.tag}[${index}] = ${value}` : null;
  },
  'entry-count'(bytes, layout, rng) {
    const all = entries(layout);
    if (!all.length) return null;
    const { entry } = rng.chance(0.5) ? rng.pick(all) : (all.find((a) => a.entry.tag === 347) ?? rng.pick(all));
    const count = rng.pick([0, 2, 0x7fffffff, 0xffffffff, 1e6, 65536, entry.count + 1, Math.max(0, entry.count - 1)]);
    writeField(bytes, layout, entry, 'count', count);
    return `tag ${entry.tag} count = ${count}`;
  },
  'entry-type'(bytes, layout, rng) {
    const all = entries(layout);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const type = rng.pick([0, 1, 2, 5, 7, 11, 12, 13, 16, 17, 99, 65535]);
    writeField(bytes, layout, entry, 'type', type);
    return `tag ${entry.tag} type = ${type}`;
  },
  'entry-offset'(bytes, layout, rng) {
    const all = entries(layout, (e) => !e.inline);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const offset = rng.pick([0, 1, bytes.length - 2, bytes.length + 1000, 0xfffffff0, entry.valueAt + 1]);
    writeField(bytes, layout, entry, 'offset', offset);
    return `tag ${entry.tag} value offset = ${offset}`;
  },
  'tag-missing'(bytes, layout, rng) {
    const all = entries(layout, (e) => KEY_TAGS.includes(e.tag));
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    writeField(bytes, layout, entry, 'tag', 65000 + rng.int(500));
    return `tag ${entry.tag} removed`;
  },
  'tag-duplicate'(bytes, layout, rng) {
    const ifd = rng.pick(layout.ifds);
    if (!ifd || ifd.entries.length < 2) return null;
    const from = rng.pick(ifd.entries);
    const to = rng.pick(ifd.entries);
    const size = layout.big ? 20 : 12;
    bytes.copy(bytes, to.at, from.at, from.at + size);
    return `entry of tag ${to.tag} replaced by tag ${from.tag}'s`;
  },
  'image-width-two-values'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 256 || e.tag === 257);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    writeField(bytes, layout, entry, 'type', 3);
    writeField(bytes, layout, entry, 'count', 2);
    writeValue(bytes, layout, { ...entry, type: 3, valueAt: entry.fieldAt }, 0, 2);
    writeValue(bytes, layout, { ...entry, type: 3, valueAt: entry.fieldAt }, 1, 2);
    return `tag ${entry.tag} holds two values`;
  },
  'tile-offsets-out'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 324 || e.tag === 273);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const k = 1 + rng.int(Math.min(entry.count, 8));
    const value = rng.pick([0, 1, bytes.length, bytes.length - 1, bytes.length + 100000, 0xffffffff, 0x7fffffff]);
    for (let i = 0; i < k; i++) writeValue(bytes, layout, entry, rng.int(entry.count), value);
    return `${k} offsets of tag ${entry.tag} = ${value}`;
  },
  'tile-counts-out'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 325 || e.tag === 279);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const k = 1 + rng.int(Math.min(entry.count, 8));
    const value = rng.pick([0, 1, 2, bytes.length, 0xffffffff, 0x7fffffff, 1e8]);
    for (let i = 0; i < k; i++) writeValue(bytes, layout, entry, rng.int(entry.count), value);
    return `${k} byte counts of tag ${entry.tag} = ${value}`;
  },
  'tiles-shared'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 324 || e.tag === 273);
    if (!all.length) return null;
    const { ifd, entry } = rng.pick(all);
    const counts = ifd.entries.find((e) => e.tag === (entry.tag === 324 ? 325 : 279));
    const first = readValues(bytes, layout, entry, 1)[0] ?? 0;
    const length = counts ? (readValues(bytes, layout, counts, 1)[0] ?? 0) : 0;
    for (let i = 0; i < entry.count && i < 1e6; i++) {
      writeValue(bytes, layout, entry, i, first);
      if (counts) writeValue(bytes, layout, counts, i, length);
    }
    return `every offset of tag ${entry.tag} = ${first}`;
  },
  'tiles-overlap'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 324);
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const values = readValues(bytes, layout, entry, 2);
    if (values.length < 2) return null;
    writeValue(bytes, layout, entry, 1, values[0] + 1 + rng.int(16));
    return 'tile 1 starts inside tile 0';
  },
  'ifd-loop'(bytes, layout, rng) {
    const main = layout.ifds.filter((i) => !i.sub && i.nextAt >= 0);
    if (!main.length) return null;
    const how = rng.pick(['last-to-first', 'self', 'pair']);
    const first = main[0];
    const last = main[main.length - 1];
    if (how === 'last-to-first' || main.length < 2) {
      const from = how === 'self' ? rng.pick(main) : last;
      writePointer(bytes, layout, from.nextAt, how === 'self' ? from.offset : first.offset);
      return how === 'self' ? `IFD at ${from.offset} points at itself` : 'last IFD points back at the first';
    }
    writePointer(bytes, layout, first.nextAt, main[1].offset);
    writePointer(bytes, layout, main[1].nextAt, first.offset);
    return 'IFDs 0 and 1 point at each other';
  },
  'ifd-next-garbage'(bytes, layout, rng) {
    const main = layout.ifds.filter((i) => i.nextAt >= 0);
    if (!main.length) return null;
    const ifd = rng.pick(main);
    const value = rng.pick([1, 3, bytes.length - 1, bytes.length + 8, 0xffffffff, rng.int(bytes.length)]);
    writePointer(bytes, layout, ifd.nextAt, value);
    return `next IFD of ${ifd.offset} = ${value}`;
  },
  'subifd-loop'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 330);
    if (!all.length) return null;
    const { ifd, entry } = rng.pick(all);
    const target = rng.chance(0.5) ? ifd.offset : (layout.ifds.find((i) => i.sub)?.offset ?? ifd.offset);
    writeValue(bytes, layout, entry, rng.int(entry.count), target);
    return `SubIFD points at the IFD at ${target}`;
  },
  'first-ifd'(bytes, layout, rng) {
    const value = rng.pick([0, 1, 7, bytes.length, bytes.length - 2, 0xffffffff, 8 + rng.int(bytes.length)]);
    writePointer(bytes, layout, layout.firstAt, value);
    return `first IFD = ${value}`;
  },
  'odd-value'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag in ODD_VALUES && [3, 4, 16].includes(e.type));
    if (!all.length) return null;
    const { entry } = rng.pick(all);
    const value = rng.pick(ODD_VALUES[entry.tag]);
    const n = entry.tag === 258 ? entry.count : 1;
    for (let i = 0; i < n; i++) writeValue(bytes, layout, entry, i, value);
    return `tag ${entry.tag} = ${value}`;
  },
  'huge-size'(bytes, layout, rng) {
    const all = entries(layout, (e) => e.tag === 256);
    if (!all.length) return null;
    const { ifd, entry } = rng.pick(all);
    const height = ifd.entries.find((e) => e.tag === 257);
    const value = rng.pick([100000, 0x7fffffff, 65536, 1e6]);
    writeValue(bytes, layout, entry, 0, value);
    if (height) writeValue(bytes, layout, height, 0, value);
    return `IFD at ${ifd.offset} claims ${value} x ${value} px`;
  },
  'byte-order'(bytes) {
    bytes.write(bytes.toString('latin1', 0, 2) === 'II' ? 'MM' : 'II', 0, 'latin1');
    return 'byte order mark swapped';
  },
};

/** PNG chunks: `{ type, at, length }` with `at` the position of the length field. */
function pngChunks(bytes) {
  const chunks = [];
  let at = 8;
  while (at + 12 <= bytes.length && chunks.length < 10000) {
    const length = bytes.readUInt32BE(at);
    chunks.push({ type: bytes.toString('latin1', at + 4, at + 8), at, length });
    if (at + 12 + length > bytes.length) break;
    at += 12 + length;
  }
  return chunks;
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** Recomputes the CRC of a chunk so the decoder looks past it. */
function fixCrc(bytes, chunk) {
  const end = chunk.at + 8 + chunk.length;
  if (end + 4 > bytes.length) return;
  let c = 0xffffffff;
  for (let i = chunk.at + 4; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  bytes.writeUInt32BE((c ^ 0xffffffff) >>> 0, end);
}

const PNG_OPS = {
  'ihdr-size'(bytes, chunks, rng) {
    const ihdr = chunks.find((c) => c.type === 'IHDR');
    if (!ihdr) return null;
    const w = rng.pick([0, 1, 20000, 100000, 0x7fffffff, 0x80000000]);
    const h = rng.pick([0, 1, 20000, 100000, 0x7fffffff]);
    bytes.writeUInt32BE(w >>> 0, ihdr.at + 8);
    bytes.writeUInt32BE(h >>> 0, ihdr.at + 12);
    fixCrc(bytes, ihdr);
    return `IHDR ${w} x ${h}`;
  },
  'ihdr-format'(bytes, chunks, rng) {
    const ihdr = chunks.find((c) => c.type === 'IHDR');
    if (!ihdr) return null;
    const field = rng.pick([16, 17, 18, 19, 20]);
    const value = rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255]);
    bytes[ihdr.at + 8 + field - 8] = value;
    fixCrc(bytes, ihdr);
    return `IHDR byte ${field} = ${value}`;
  },
  'chunk-length'(bytes, chunks, rng) {
    if (!chunks.length) return null;
    const chunk = rng.pick(chunks);
    const length = rng.pick([0, 1, 0x7fffffff, 0xffffffff, chunk.length + 1]);
    bytes.writeUInt32BE(length >>> 0, chunk.at);
    return `${chunk.type} length = ${length}`;
  },
  'idat-flip'(bytes, chunks, rng) {
    const idat = chunks.filter((c) => c.type === 'IDAT');
    if (!idat.length) return null;
    const chunk = rng.pick(idat);
    flipBits(bytes, rng, 1 + rng.int(8), [chunk.at + 8, Math.min(bytes.length, chunk.at + 8 + chunk.length)]);
    fixCrc(bytes, chunk);
    return 'IDAT bits flipped (CRC fixed)';
  },
  crc(bytes, chunks, rng) {
    if (!chunks.length) return null;
    const chunk = rng.pick(chunks);
    const end = chunk.at + 8 + chunk.length;
    if (end + 4 > bytes.length) return null;
    bytes[end] ^= 0xff;
    return `${chunk.type} CRC broken`;
  },
};

const ANY_OPS = {
  'bit-flip'(bytes, rng) {
    const n = 1 + rng.int(32);
    flipBits(bytes, rng, n);
    return `${n} bits flipped`;
  },
  'byte-set'(bytes, rng) {
    const n = 1 + rng.int(8);
    for (let i = 0; i < n; i++) bytes[rng.int(bytes.length)] = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(256)]);
    return `${n} bytes set`;
  },
};

/**
 * One mutated file: `{ bytes, ops }` from `seedBytes` by the generator `rng`. `ext` is kept by the caller (a
 * mutated `.svs` stays an `.svs`).
 */
export function mutate(seedBytes, rng) {
  let bytes = Buffer.from(seedBytes);
  const ops = [];
  const rounds = 1 + (rng.chance(0.35) ? 1 + rng.int(2) : 0);
  for (let round = 0; round < rounds; round++) {
    const kind = kindOf(bytes);
    let done = null;
    if (rng.chance(0.12)) {
      const end = rng.chance(0.3) ? 8 + rng.int(Math.min(600, bytes.length)) : rng.int(bytes.length);
      bytes = bytes.subarray(0, Math.max(1, end));
      done = `truncated to ${bytes.length} bytes`;
    } else if (kind === 'tiff' && rng.chance(0.85)) {
      const layout = parseTiff(bytes);
      if (layout) {
        const name = rng.pick(Object.keys(TIFF_OPS));
        const what = TIFF_OPS[name](bytes, layout, rng);
        if (what) done = `${name}: ${what}`;
      }
    } else if (kind === 'png' && rng.chance(0.8)) {
      const name = rng.pick(Object.keys(PNG_OPS));
      const what = PNG_OPS[name](bytes, pngChunks(bytes), rng);
      if (what) done = `${name}: ${what}`;
    }
    if (!done) {
      const name = rng.pick(Object.keys(ANY_OPS));
      done = `${name}: ${ANY_OPS[name](bytes, rng)}`;
    }
    ops.push(done);
  }
  return { bytes: Buffer.from(bytes), ops };
}

/** A minimal JPEG-ish payload for generated bombs: the first tile of a seed when it has one, else zeros. */
function someTile(seeds) {
  for (const seed of seeds) {
    const layout = parseTiff(seed.bytes);
    const offsets = layout?.ifds[0]?.entries.find((e) => e.tag === 324);
    const counts = layout?.ifds[0]?.entries.find((e) => e.tag === 325);
    if (!offsets || !counts) continue;
    const [at] = readValues(seed.bytes, layout, offsets, 1);
    const [length] = readValues(seed.bytes, layout, counts, 1);
    if (length > 0 && at + length <= seed.bytes.length) return seed.bytes.subarray(at, at + length);
  }
  return Buffer.alloc(64);
}

/** Files built from scratch: the bombs and impossible sizes a mutation of a small seed rarely reaches. */
export const GENERATORS = {
  'bomb-shared-tiles'(rng, seeds) {
    const side = rng.pick([100000, 60000]);
    return {
      ext: '.tif',
      bytes: buildTiledTiff({ width: side, height: side, tile: someTile(seeds), compression: 7 }),
      ops: [`${side} x ${side} px, every tile the same bytes`],
    };
  },
  'tiny-huge'(rng) {
    const side = rng.pick([0x7fffffff, 0xffffffff, 1e6]);
    return {
      ext: rng.pick(['.tif', '.svs']),
      bytes: buildTiledTiff({
        width: side,
        height: side,
        tile: Buffer.alloc(64, 0x55),
        tiles: 1,
        compression: rng.pick([1, 7, 8]),
        description: rng.chance(0.5) ? 'Aperio Image Library v10.0.50\r\n|MPP = 0.5' : undefined,
      }),
      ops: [`${side} x ${side} px in one tile`],
    };
  },
  'png-huge'(rng) {
    const side = rng.pick([20000, 100000, 0x7fffffff]);
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(side >>> 0, 0);
    ihdr.writeUInt32BE(side >>> 0, 4);
    ihdr[8] = 8;
    ihdr[9] = 2;
    const chunk = (type, data) => {
      const out = Buffer.alloc(12 + data.length);
      out.writeUInt32BE(data.length, 0);
      out.write(type, 4, 'latin1');
      data.copy(out, 8);
      fixCrc(out, { at: 0, length: data.length });
      return out;
    };
    const rows = Buffer.alloc(rng.int(4096));
    const png = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      chunk('IHDR', ihdr),
      chunk('IDAT', deflateSync(rows)),
      chunk('IEND', Buffer.alloc(0)),
    ]);
    return { ext: '.png', bytes: png, ops: [`PNG header claims ${side} x ${side} px`] };
  },
};
