/**
 * Fixed regression cases: every kind of crash, hang or memory blow-up the fuzzer (or the issue that asked for it)
 * found, rebuilt by name from the seed corpus with one deterministic edit, and the refusal Tessera must give. They run
 * in-process against the reader (`packages/tiler/src/hostile.test.ts`) and through the real CLI
 * (`apps/cli/src/fuzz.test.ts`). A new finding of the fuzzer is added here as one more entry.
 *
 * Each case: `{ name, build(seeds) => { ext, bytes }, message: RegExp, read?: true }` where `message` is what
 * `tessera info` and `tessera predict` say on stderr (exit code 5), or, for a case marked `read`, what `tessera info`
 * prints for a file that is read after all (exit code 0; predict succeeds too).
 */
import { buildTiledTiff, parseTiff, readValues, writeField, writePointer, writeValue } from './tiff-layout.mjs';

/** The bytes of the seed whose name ends with `name`, copied. */
function seed(seeds, name) {
  const found = seeds.find((s) => s.name.endsWith(name));
  if (!found) throw new Error(`regression seed ${name} missing from the corpus`);
  return { ext: found.ext, bytes: Buffer.from(found.bytes) };
}

/** Applies `edit(bytes, layout)` to a copy of a TIFF seed. */
function editTiff(name, edit) {
  return (seeds) => {
    const { ext, bytes } = seed(seeds, name);
    const layout = parseTiff(bytes);
    edit(bytes, layout);
    return { ext, bytes };
  };
}

function entry(layout, tag, ifd = 0) {
  const found = layout.ifds[ifd].entries.find((e) => e.tag === tag);
  if (!found) throw new Error(`regression: no tag ${tag} in IFD ${ifd}`);
  return found;
}

function firstTile(seeds) {
  const { bytes } = seed(seeds, 'jpeg-pyramid.tif');
  const layout = parseTiff(bytes);
  const [at] = readValues(bytes, layout, entry(layout, 324), 1);
  const [length] = readValues(bytes, layout, entry(layout, 325), 1);
  return bytes.subarray(at, at + length);
}

export const REGRESSIONS = [
  {
    name: 'ImageWidth holding two values (V8 "invalid size" crash, SIGTRAP)',
    build: editTiff('aperio-like.svs', (bytes, layout) => {
      const e = entry(layout, 256);
      writeField(bytes, layout, e, 'type', 3);
      writeField(bytes, layout, e, 'count', 2);
      writeValue(bytes, layout, { ...e, type: 3, valueAt: e.fieldAt }, 0, 2);
      writeValue(bytes, layout, { ...e, type: 3, valueAt: e.fieldAt }, 1, 2);
    }),
    message: /ImageWidth \(tag 256\) holds 2 value\(s\) of field type 3 \(2, 2\), expected one integer/,
  },
  {
    name: 'ImageLength missing (printed as "undefined", V8 crash in predict)',
    build: editTiff('small.svs', (bytes, layout) => writeField(bytes, layout, entry(layout, 257), 'tag', 65001)),
    message: /level 0 declares a size of 16 x no height px/,
  },
  {
    name: 'a 0 x 0 image',
    build: editTiff('boxes.tiff', (bytes, layout) => {
      writeValue(bytes, layout, entry(layout, 256), 0, 0);
      writeValue(bytes, layout, entry(layout, 257), 0, 0);
    }),
    message: /level 0 declares a size of 0 x 0 px; expected whole numbers/,
  },
  {
    name: 'TileLength missing ("tiles 64xnull")',
    build: editTiff('boxes.tiff', (bytes, layout) => writeField(bytes, layout, entry(layout, 323), 'tag', 65002)),
    message: /level 0 has tiles of 64 x no height px/,
  },
  {
    name: 'TileLength 0 ("RangeError: Invalid typed array length: Infinity" in the tile decoder)',
    build: editTiff('OS-1-detail.ome.tif', (bytes, layout) => writeValue(bytes, layout, entry(layout, 323), 0, 0)),
    message: /level 0 has tiles of 512 x 0 px \(expected 1 to 65536 each\)/,
  },
  {
    name: 'TileByteCounts one entry short ("Incorrect count for TileByteCounts" from libtiff)',
    build: editTiff('boxes.tiff', (bytes, layout) => {
      const counts = entry(layout, 325);
      writeField(bytes, layout, counts, 'count', counts.count - 1);
    }),
    message:
      /level 0 is 300 x 250 px in tiles of 64 x 64, which makes 20 tiles, but its tables list 20 offsets and 19 byte counts/,
  },
  {
    name: 'next-IFD chain from the last IFD back to the first (hang)',
    build: editTiff('OS-2-ndpi.ome.tif', (bytes, layout) => {
      const main = layout.ifds.filter((i) => !i.sub);
      writePointer(bytes, layout, main[main.length - 1].nextAt, main[0].offset);
    }),
    message: /is an IFD already read \(IFD 0\): the IFD chain loops/,
  },
  {
    name: 'two IFDs pointing at each other (hang)',
    build: editTiff('CMU-1-Small-Region.svs', (bytes, layout) => {
      writePointer(bytes, layout, layout.ifds[1].nextAt, layout.ifds[0].offset);
    }),
    message: /IFD 2 at byte \d+ is an IFD already read \(IFD 0\): the IFD chain loops/,
  },
  {
    name: 'an IFD pointing at itself (hang)',
    build: editTiff('OS-2-vsi.ome.tif', (bytes, layout) =>
      writePointer(bytes, layout, layout.ifds[0].nextAt, layout.ifds[0].offset),
    ),
    message: /IFD 1 at byte \d+ is an IFD already read \(IFD 0\): the IFD chain loops/,
  },
  {
    name: 'a SubIFD that points at its own IFD (listed as a second level)',
    build: editTiff('subifd-pyramid.tif', (bytes, layout) =>
      writeValue(bytes, layout, entry(layout, 330), 0, layout.ifds[0].offset),
    ),
    message: /SubIFD 0 of IFD 0 at byte \d+ is an IFD already read \(IFD 0\)/,
  },
  {
    name: 'JPEGTables whose count says 2147483647 (4.2 GB of RSS in info)',
    build: editTiff('jpeg-pyramid.tif', (bytes, layout) =>
      writeField(bytes, layout, entry(layout, 347), 'count', 0x7fffffff),
    ),
    message: /JPEGTables \(tag 347\) says 2147483647 values at byte \d+, which end past the end of the file/,
  },
  {
    name: 'a 374-byte TIFF declaring 2^31-1 x 2^31-1 pixels (4.6 GB in predict)',
    build: () => ({
      ext: '.tif',
      bytes: buildTiledTiff({
        width: 0x7fffffff,
        height: 0x7fffffff,
        tile: Buffer.alloc(64, 0x55),
        tiles: 1,
        compression: 8,
      }),
    }),
    message: /declares a size of 2147483647 x 2147483647 px; expected whole numbers from 1 to 10,000,000/,
  },
  {
    name: 'a 1.2 MB TIFF of 100000 x 100000 px whose tiles all point at the same bytes (predict busy for minutes)',
    build: (seeds) => ({
      ext: '.tif',
      bytes: buildTiledTiff({ width: 100000, height: 100000, tile: firstTile(seeds) }),
    }),
    message: /declares 100000 x 100000 px .* point at 1 distinct offset\(s\) holding \d+ bytes.*decompression bomb/,
  },
  {
    name: 'a 16x16 SVS with Photometric 8 (CIELab): predict sat idle forever',
    build: editTiff('small.svs', (bytes, layout) => writeValue(bytes, layout, entry(layout, 262), 0, 8)),
    message:
      /level 0 has PhotometricInterpretation 8; expected grey \(0, 1\), RGB \(2\), palette \(3\), CMYK \(5\) or YCbCr \(6\)/,
  },
  {
    name: 'tile offsets past the end of the file',
    build: editTiff('OS-1-detail.ome.tif', (bytes, layout) =>
      writeValue(bytes, layout, entry(layout, 324), 3, 0x7fffffff),
    ),
    message: /is truncated: level 0 has tile data up to byte \d+ but the file has \d+ bytes/,
  },
  {
    name: 'a tile byte count of 0 in a Deflate level ("Invalid tile byte count" from libvips)',
    build: editTiff('bigtiff-deflate.tif', (bytes, layout) => writeValue(bytes, layout, entry(layout, 325), 1, 0)),
    message:
      /level 0 has 1 of \d+ tiles with no data \(offset or byte count 0\), which its decoder \(libvips\) cannot read/,
  },
  {
    name: 'Predictor 0 ("\\"Predictor\\" value 0 not supported")',
    build: editTiff('strips-lzw.tif', (bytes, layout) => writeValue(bytes, layout, entry(layout, 317), 0, 0)),
    message: /level 0 has Predictor 0; expected 1 \(none\) or 2/,
  },
  {
    name: 'SamplesPerPixel 2 on an RGB level ("vips_colourspace: no known route from \'multiband\'")',
    build: editTiff('strips-lzw.tif', (bytes, layout) => writeValue(bytes, layout, entry(layout, 277), 0, 2)),
    message: /level 0 is RGB with 2 samples per pixel \(expected 3 or 4\)/,
  },
  {
    name: 'a corrupt Deflate tile (decoding error in the thumbnail, "unexpected failure" before)',
    build: (seeds) => {
      const { ext, bytes } = seed(seeds, 'bigtiff-deflate.tif');
      const layout = parseTiff(bytes);
      const [at] = readValues(bytes, layout, entry(layout, 324), 1);
      bytes.fill(0xa5, at + 2, at + 40);
      return { ext, bytes };
    },
    message: /level 0 region x 0, y 0, 128x128 could not be decoded \(Deflate\)/,
  },
  {
    name: 'a JPEG tile that starts with zeros ("VipsJpeg: Not a JPEG file: starts with 0x00")',
    build: (seeds) => {
      const { ext, bytes } = seed(seeds, 'jpeg-pyramid.tif');
      const layout = parseTiff(bytes);
      const [at] = readValues(bytes, layout, entry(layout, 324), 1);
      bytes.fill(0, at, at + 16);
      return { ext, bytes };
    },
    message:
      /level 0(: tile 0,0 \(JPEG, \d+ bytes\)| region x 0, y 0, 128x128) could not be decoded.*(Not a JPEG|unsupported image format)/,
  },
  {
    name: 'a PNG whose header claims 100000 x 100000 px in a few bytes',
    build: (seeds) => {
      const { bytes } = seed(seeds, 'boxes.png');
      return { ext: '.png', bytes: pngWithSize(bytes, 100000, 100000) };
    },
    message: /its PNG header declares 100000 x 100000 px, which its \d+ bytes cannot hold/,
  },
  {
    name: 'a PNG with a corrupt IDAT ("pngload: libspng read error")',
    build: (seeds) => {
      const { bytes } = seed(seeds, 'boxes.png');
      const idat = bytes.indexOf('IDAT');
      bytes.fill(0x5a, idat + 6, idat + 30);
      return { ext: '.png', bytes: fixPngCrcs(bytes) };
    },
    message: /level 0 region x 0, y 0, \d+x\d+ could not be decoded \(PNG\)/,
  },
  {
    // Fuzzer seed 1, case 826 (every tile of this slide pointing at the same bytes) crashed the same way as the file
    // itself: the crash was the size, not the damage.
    name: 'the 1101 x 1101 px OME-TIFF OS-1-detail as it is (its 1024 px overlay crashed predict with SIGSEGV in libvips)',
    build: (seeds) => seed(seeds, 'OS-1-detail.ome.tif'),
    message: /1101 x 1101 px/,
    read: true,
  },
  {
    name: 'a DICOM PixelSpacing with one value where two are read (TypeError inside dicom-parser, exit 70)',
    build: (seeds) => {
      const { ext, bytes } = seed(seeds, 'boxes_0.dcm');
      const at = bytes.indexOf(Buffer.from('(\x000\x00DS', 'latin1')); // (0028,0030) PixelSpacing, explicit VR DS
      if (at < 0) throw new Error('regression: no PixelSpacing in boxes_0.dcm');
      bytes[at + 8 + 2] = 0; // '.0\0...': the value ends before its second number
      return { ext, bytes };
    },
    read: true,
    message: /µm\/px: +unknown \(the file does not record a pixel size\)/,
  },
];

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function fixPngCrcs(bytes) {
  let at = 8;
  while (at + 12 <= bytes.length) {
    const length = bytes.readUInt32BE(at);
    const end = at + 8 + length;
    if (end + 4 > bytes.length) break;
    let c = 0xffffffff;
    for (let i = at + 4; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    bytes.writeUInt32BE((c ^ 0xffffffff) >>> 0, end);
    at = end + 4;
  }
  return bytes;
}

function pngWithSize(bytes, width, height) {
  const out = Buffer.from(bytes);
  out.writeUInt32BE(width, 16);
  out.writeUInt32BE(height, 20);
  return fixPngCrcs(out);
}
