/**
 * A small TIFF writer for tests and benchmarks: classic little-endian TIFF whose tiles are given already encoded, so
 * that a test can build the files real scanners and exporters write and no library here writes (Aperio JPEG 2000
 * compression 33003/33005, JFIF JPEG tiles in a Photometric RGB OME-TIFF with SubIFD levels, as QuPath writes).
 *
 * A page: { width, height, tileWidth, tileHeight, tiles: Uint8Array[] (row-major), compression, photometric,
 * samples = 3, description?, jpegTables?, newSubfileType?, subifds?: page[], extra?: { tag, type: 'ascii' | 'short' |
 * 'long' | 'undefined', value: string | number[] | Uint8Array }[] (further tags, e.g. Make or XMP) }.
 */
import { writeFileSync } from 'node:fs';

const SHORT = 3;
const LONG = 4;
const ASCII = 2;
const UNDEFINED = 7;

/** Writes `pages` (the main IFD chain, each with optional SubIFDs) to `path`. */
export function writeTiledTiff(path, pages) {
  const chunks = [];
  let offset = 8;
  const push = (bytes) => {
    const at = offset;
    chunks.push(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes)); // IFDs are patched after being pushed
    offset += bytes.length;
    if (offset % 2) {
      chunks.push(Buffer.alloc(1));
      offset += 1;
    }
    return at;
  };
  const header = Buffer.alloc(8);
  header.write('II', 0, 'latin1');
  header.writeUInt16LE(42, 2);

  /** Writes one page's data and IFD; returns the IFD's offset. `next` is patched later. */
  const writePage = (page) => {
    const samples = page.samples ?? 3;
    const tileOffsets = page.tiles.map((tile) => push(tile));
    const tileCounts = page.tiles.map((tile) => tile.length);
    const subOffsets = (page.subifds ?? []).map((sub) => writePage(sub).ifd);
    const entries = [];
    const entry = (tag, type, values) => entries.push({ tag, type, values });
    if (page.newSubfileType !== undefined) entry(254, LONG, [page.newSubfileType]);
    entry(256, LONG, [page.width]);
    entry(257, LONG, [page.height]);
    entry(258, SHORT, Array(samples).fill(8));
    entry(259, SHORT, [page.compression]);
    entry(262, SHORT, [page.photometric]);
    if (page.description) entry(270, ASCII, Buffer.from(`${page.description}\0`, 'latin1'));
    entry(277, SHORT, [samples]);
    entry(284, SHORT, [1]);
    entry(322, LONG, [page.tileWidth]);
    entry(323, LONG, [page.tileHeight]);
    entry(324, LONG, tileOffsets);
    entry(325, LONG, tileCounts);
    if (subOffsets.length) entry(330, LONG, subOffsets);
    if (page.jpegTables) entry(347, UNDEFINED, Buffer.from(page.jpegTables));
    const types = { ascii: ASCII, short: SHORT, long: LONG, undefined: UNDEFINED };
    for (const { tag, type, value } of page.extra ?? []) {
      entry(tag, types[type], typeof value === 'string' ? Buffer.from(`${value}\0`, 'latin1') : value);
    }
    entries.sort((a, b) => a.tag - b.tag);
    // Values that do not fit in 4 bytes go before the IFD.
    const size = { [SHORT]: 2, [LONG]: 4, [ASCII]: 1, [UNDEFINED]: 1 };
    const encoded = entries.map(({ tag, type, values }) => {
      const count = values.length;
      const bytes = Buffer.alloc(count * size[type]);
      for (let i = 0; i < count; i++) {
        if (type === SHORT) bytes.writeUInt16LE(values[i], 2 * i);
        else if (type === LONG) bytes.writeUInt32LE(values[i], 4 * i);
        else bytes[i] = values[i];
      }
      return { tag, type, count, bytes, at: bytes.length > 4 ? push(bytes) : -1 };
    });
    const ifd = Buffer.alloc(2 + 12 * encoded.length + 4);
    ifd.writeUInt16LE(encoded.length, 0);
    encoded.forEach(({ tag, type, count, bytes, at }, i) => {
      const base = 2 + 12 * i;
      ifd.writeUInt16LE(tag, base);
      ifd.writeUInt16LE(type, base + 2);
      ifd.writeUInt32LE(count, base + 4);
      if (at >= 0) ifd.writeUInt32LE(at, base + 8);
      else bytes.copy(ifd, base + 8);
    });
    const at = push(ifd);
    return { ifd: at, buffer: ifd };
  };

  const written = pages.map((page) => writePage(page));
  header.writeUInt32LE(written[0].ifd, 4);
  for (let i = 0; i + 1 < written.length; i++) {
    written[i].buffer.writeUInt32LE(written[i + 1].ifd, written[i].buffer.length - 4);
  }
  writeFileSync(path, Buffer.concat([header, ...chunks]));
}
