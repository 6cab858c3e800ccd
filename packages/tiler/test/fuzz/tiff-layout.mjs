/**
 * The layout of a TIFF file as the mutator sees it: where the header, each image file directory (IFD), each entry
 * and each entry's value lie, so that a mutation can change one field (a count, a value, a next-IFD pointer) and leave
 * the rest of the file as it was. Classic TIFF and BigTIFF, little- and big-endian. Also builds small TIFFs from
 * scratch (decompression bombs) and converts a little-endian file to big-endian.
 *
 * This parser is the fuzzer's own, independent of the reader under test: it reads what is there without judging it,
 * stops at 64 IFDs and never follows a pointer outside the buffer.
 */

/** Bytes per value of each TIFF field type (1 BYTE ... 18 IFD8); unknown types have none. */
export const TYPE_SIZES = {
  1: 1,
  2: 1,
  3: 2,
  4: 4,
  5: 8,
  6: 1,
  7: 1,
  8: 2,
  9: 4,
  10: 8,
  11: 4,
  12: 8,
  13: 4,
  16: 8,
  17: 8,
  18: 8,
};

/** Element size used when reading or writing the numbers of a field: rationals are pairs of 4-byte integers. */
const ELEMENT = { 5: 4, 10: 4 };

/**
 * Reads the layout of a TIFF, or returns `null` when the header is not TIFF's.
 * @returns `{ le, big, firstAt, ifds: [{ offset, sub, nextAt, entries: [{ tag, type, count, at, valueAt, bytes }] }] }`
 * where `at` is the entry's position, `valueAt` its value's (inline or pointed to), `nextAt` the next-IFD pointer's.
 */
export function parseTiff(buf) {
  if (buf.length < 8) return null;
  const order = buf.toString('latin1', 0, 2);
  if (order !== 'II' && order !== 'MM') return null;
  const le = order === 'II';
  const io = accessors(buf, le);
  const magic = io.r16(2);
  if (magic !== 42 && magic !== 43) return null;
  const big = magic === 43;
  if (big && buf.length < 16) return null;
  const firstAt = big ? 8 : 4;
  const ifds = [];
  const seen = new Set();
  const walk = (offset, sub) => {
    while (offset > 0 && !seen.has(offset) && ifds.length < 64) {
      seen.add(offset);
      const head = big ? 8 : 2;
      if (offset + head > buf.length) return;
      const n = big ? io.r64(offset) : io.r16(offset);
      const size = big ? 20 : 12;
      const entries = [];
      for (let i = 0; i < n && i < 512; i++) {
        const at = offset + head + i * size;
        if (at + size > buf.length) break;
        const tag = io.r16(at);
        const type = io.r16(at + 2);
        const count = big ? io.r64(at + 4) : io.r32(at + 4);
        const fieldAt = at + (big ? 12 : 8);
        const bytes = (TYPE_SIZES[type] ?? 0) * count;
        const inline = bytes <= (big ? 8 : 4);
        const valueAt = inline ? fieldAt : big ? io.r64(fieldAt) : io.r32(fieldAt);
        entries.push({ tag, type, count, at, fieldAt, valueAt, bytes, inline });
      }
      const nextAt = offset + head + n * size;
      const ifd = { offset, sub, nextAt: nextAt + (big ? 8 : 4) <= buf.length ? nextAt : -1, entries };
      ifds.push(ifd);
      const subifds = entries.find((e) => e.tag === 330);
      if (subifds && !sub) {
        for (const value of readValues(buf, { le, big }, subifds, 16)) walk(value, true);
      }
      if (ifd.nextAt < 0) return;
      offset = big ? io.r64(ifd.nextAt) : io.r32(ifd.nextAt);
    }
  };
  walk(big ? io.r64(8) : io.r32(4), false);
  return { le, big, firstAt, ifds };
}

/** Readers and writers of 16, 32 and 64-bit unsigned integers in the file's byte order. */
export function accessors(buf, le) {
  return {
    r16: (o) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o)),
    r32: (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o)),
    r64: (o) => Number(le ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o)),
    w16: (o, v) => (le ? buf.writeUInt16LE(v & 0xffff, o) : buf.writeUInt16BE(v & 0xffff, o)),
    w32: (o, v) => (le ? buf.writeUInt32LE(v >>> 0, o) : buf.writeUInt32BE(v >>> 0, o)),
    w64: (o, v) => (le ? buf.writeBigUInt64LE(BigInt(v), o) : buf.writeBigUInt64BE(BigInt(v), o)),
  };
}

/** The first `max` numbers of an entry (integers of types 1, 3, 4, 13, 16, 18; others give nothing). */
export function readValues(buf, layout, entry, max = Infinity) {
  const io = accessors(buf, layout.le);
  const size = { 1: 1, 3: 2, 4: 4, 13: 4, 16: 8, 18: 8 }[entry.type];
  if (!size) return [];
  const values = [];
  for (let i = 0; i < entry.count && i < max; i++) {
    const at = entry.valueAt + i * size;
    if (at + size > buf.length) break;
    values.push(size === 1 ? buf[at] : size === 2 ? io.r16(at) : size === 4 ? io.r32(at) : io.r64(at));
  }
  return values;
}

/** Writes value `index` of an entry (integer types), if it lies inside the buffer; returns whether it did. */
export function writeValue(buf, layout, entry, index, value) {
  const io = accessors(buf, layout.le);
  const size = ELEMENT[entry.type] ?? TYPE_SIZES[entry.type];
  const at = entry.valueAt + index * size;
  if (!size || at < 0 || at + size > buf.length) return false;
  if (size === 1) buf[at] = value & 0xff;
  else if (size === 2) io.w16(at, value);
  else if (size === 4) io.w32(at, Math.min(value, 0xffffffff));
  else io.w64(at, value);
  return true;
}

/** Writes an entry's type, count or value-offset field. */
export function writeField(buf, layout, entry, field, value) {
  const io = accessors(buf, layout.le);
  if (field === 'tag') io.w16(entry.at, value);
  else if (field === 'type') io.w16(entry.at + 2, value);
  else if (field === 'count')
    (layout.big ? io.w64 : io.w32)(entry.at + 4, layout.big ? value : Math.min(value, 0xffffffff));
  else if (field === 'offset')
    (layout.big ? io.w64 : io.w32)(entry.fieldAt, layout.big ? value : Math.min(value, 0xffffffff));
}

/** Writes a next-IFD pointer (or the header's first-IFD pointer when `at` is `layout.firstAt`). */
export function writePointer(buf, layout, at, value) {
  const io = accessors(buf, layout.le);
  if (layout.big) io.w64(at, value);
  else io.w32(at, Math.min(value, 0xffffffff));
}

/**
 * The same file in big-endian byte order: header, IFD entries, values of multi-byte types and next pointers swapped;
 * pixel data kept as it is (byte-oriented codecs do not care). Returns `null` for files it cannot convert.
 */
export function toBigEndian(buf) {
  const layout = parseTiff(buf);
  if (!layout || !layout.le) return null;
  const out = Buffer.from(buf);
  const src = accessors(buf, true);
  const dst = accessors(out, false);
  out.write('MM', 0, 'latin1');
  dst.w16(2, layout.big ? 43 : 42);
  if (layout.big) {
    dst.w16(4, src.r16(4));
    dst.w16(6, src.r16(6));
    dst.w64(8, src.r64(8));
  } else dst.w32(4, src.r32(4));
  const swapped = new Set();
  for (const ifd of layout.ifds) {
    if (layout.big) dst.w64(ifd.offset, ifd.entries.length);
    else dst.w16(ifd.offset, ifd.entries.length);
    for (const e of ifd.entries) {
      dst.w16(e.at, e.tag);
      dst.w16(e.at + 2, e.type);
      if (layout.big) dst.w64(e.at + 4, e.count);
      else dst.w32(e.at + 4, e.count);
      if (!e.inline) {
        if (layout.big) dst.w64(e.fieldAt, e.valueAt);
        else dst.w32(e.fieldAt, e.valueAt);
      }
      if (swapped.has(e.valueAt) && !e.inline) continue;
      swapped.add(e.valueAt);
      const size = ELEMENT[e.type] ?? TYPE_SIZES[e.type] ?? 1;
      const n = e.bytes / size;
      for (let i = 0; i < n && size > 1; i++) {
        const at = e.valueAt + i * size;
        if (at + size > buf.length) break;
        for (let k = 0; k < size; k++) out[at + k] = buf[at + size - 1 - k];
      }
    }
    if (ifd.nextAt >= 0) {
      if (layout.big) dst.w64(ifd.nextAt, src.r64(ifd.nextAt));
      else dst.w32(ifd.nextAt, src.r32(ifd.nextAt));
    }
  }
  return out;
}

/**
 * A classic little-endian TIFF of one tiled IFD, built from scratch: `{ width, height, tileWidth, tileHeight,
 * compression = 7, photometric = 2, samples = 3, tile: Uint8Array, tiles?: number (entries in the tile tables;
 * default the number the size needs), shared = true (every entry points at the same bytes) }`. This is how a tiny
 * file claims a huge slide.
 */
export function buildTiledTiff({
  width,
  height,
  tileWidth = 256,
  tileHeight = 256,
  compression = 7,
  photometric = 2,
  samples = 3,
  tile,
  tiles,
  description,
}) {
  const n = tiles ?? Math.ceil(width / tileWidth) * Math.ceil(height / tileHeight);
  const entries = [
    [256, 4, [width]],
    [257, 4, [height]],
    [258, 3, Array(samples).fill(8)],
    [259, 3, [compression]],
    [262, 3, [photometric]],
    ...(description ? [[270, 2, [...Buffer.from(description + '\0', 'latin1')]]] : []),
    [277, 3, [samples]],
    [284, 3, [1]],
    [322, 4, [tileWidth]],
    [323, 4, [tileHeight]],
    [324, 4, null],
    [325, 4, null],
  ];
  const ifdSize = 2 + entries.length * 12 + 4;
  let at = 8 + ifdSize;
  const blocks = [];
  const place = (bytes) => {
    const where = at;
    blocks.push(bytes);
    at += bytes.length + (bytes.length % 2);
    if (bytes.length % 2) blocks.push(Buffer.alloc(1));
    return where;
  };
  const tileAt = place(Buffer.from(tile));
  const values = entries.map(([tag, type, list]) => {
    if (list === null) list = Array(n).fill(tag === 324 ? tileAt : tile.length);
    const size = TYPE_SIZES[type];
    const bytes = Buffer.alloc(list.length * size);
    list.forEach((v, i) =>
      size === 1 ? (bytes[i] = v) : size === 2 ? bytes.writeUInt16LE(v, 2 * i) : bytes.writeUInt32LE(v >>> 0, 4 * i),
    );
    return { tag, type, count: list.length, bytes, offset: bytes.length > 4 ? place(bytes) : -1 };
  });
  const ifd = Buffer.alloc(ifdSize);
  ifd.writeUInt16LE(entries.length, 0);
  values.forEach(({ tag, type, count, bytes, offset }, i) => {
    const base = 2 + 12 * i;
    ifd.writeUInt16LE(tag, base);
    ifd.writeUInt16LE(type, base + 2);
    ifd.writeUInt32LE(count, base + 4);
    if (offset >= 0) ifd.writeUInt32LE(offset, base + 8);
    else bytes.copy(ifd, base + 8);
  });
  const header = Buffer.from([0x49, 0x49, 42, 0, 8, 0, 0, 0]);
  return Buffer.concat([header, ifd, ...blocks]);
}
