/**
 * The fuzzer's seed corpus, made at run time (nothing is committed): every slide and image under the shared data's
 * `slides/` folder, and a few files derived from them here that cover what the shared files do not: a JPEG pyramid,
 * a BigTIFF, a SubIFD pyramid of JFIF tiles, an LZW strip TIFF, an Aperio-described JPEG TIFF and big-endian copies.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { extname, join, resolve } from 'node:path';
import sharp from 'sharp';
import { writeTiledTiff } from '../tiff-writer.mjs';
import { toBigEndian } from './tiff-layout.mjs';

/** The shared data folder: `TESSERA_DATA`, else `../shared/data` beside the repository. */
export function dataFolder() {
  const root = resolve(import.meta.dirname, '../../../..');
  return process.env.TESSERA_DATA ?? join(root, '../shared/data');
}

const SEED_EXTENSIONS = new Set(['.svs', '.tif', '.tiff', '.png', '.dcm', '.jpg', '.jpeg']);

function filesUnder(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else if (SEED_EXTENSIONS.has(extname(name).toLowerCase())) out.push(path);
  }
  return out;
}

/**
 * The seeds: `{ name, ext, bytes }`, the shared files first, then the derived ones.
 * @throws when the shared slides folder is missing.
 */
export async function makeCorpus(data = dataFolder()) {
  const slides = join(data, 'slides');
  if (!existsSync(slides)) throw new Error(`fuzz corpus: no shared slides at ${slides} (set TESSERA_DATA)`);
  const seeds = filesUnder(slides).map((path) => ({
    name: path.slice(slides.length + 1),
    ext: extname(path).toLowerCase(),
    bytes: readFileSync(path),
  }));
  const cmu = seeds.find((s) => s.name.endsWith('CMU-1-Small-Region.svs'));
  const source = cmu
    ? sharp(cmu.bytes, { page: 0 }).extract({ left: 600, top: 900, width: 768, height: 640 })
    : sharp({ create: { width: 768, height: 640, channels: 3, background: '#c080a0' } });
  const rgb = await source.removeAlpha().raw().toBuffer();
  const image = () => sharp(rgb, { raw: { width: 768, height: 640, channels: 3 } });
  const derived = [
    [
      'jpeg-pyramid.tif',
      image().tiff({ tile: true, tileWidth: 128, tileHeight: 128, pyramid: true, compression: 'jpeg', quality: 80 }),
    ],
    [
      'bigtiff-deflate.tif',
      image().tiff({
        tile: true,
        tileWidth: 128,
        tileHeight: 128,
        pyramid: true,
        compression: 'deflate',
        bigtiff: true,
      }),
    ],
    // libvips asked for SubIFDs (this build writes a page chain instead); kept so that case numbers stay the same.
    [
      'vips-subifd-option.tif',
      image().tiff({ tile: true, tileWidth: 128, tileHeight: 128, pyramid: true, subifd: true, compression: 'jpeg' }),
    ],
    ['strips-lzw.tif', image().resize(256, 200).tiff({ compression: 'lzw', predictor: 'horizontal' })],
    ['small.png', image().resize(200, 160).png()],
  ];
  for (const [name, pipeline] of derived) {
    seeds.push({ name: `derived/${name}`, ext: extname(name), bytes: await pipeline.toBuffer() });
  }
  // An Aperio-described JPEG TIFF: the SVS path of the reader (vendor, µm/px) on a small file.
  const tiles = await image()
    .resize(256, 256)
    .tiff({ tile: true, tileWidth: 128, tileHeight: 128, compression: 'jpeg', quality: 80 })
    .toBuffer();
  seeds.push({
    name: 'derived/aperio-like.svs',
    ext: '.svs',
    bytes: withDescription(tiles, 'Aperio Image Library v10.0.50\r\n256x256 |MPP = 0.499'),
  });
  for (const seed of seeds.filter((s) => /derived\/(jpeg-pyramid|bigtiff-deflate|vips-subifd-option)/.test(s.name))) {
    const be = toBigEndian(seed.bytes);
    if (be) seeds.push({ name: seed.name.replace(/(\.\w+)$/, '-be$1'), ext: seed.ext, bytes: be });
  }
  const be = toBigEndian(seeds.find((s) => s.name.endsWith('small.svs'))?.bytes ?? Buffer.alloc(0));
  if (be) seeds.push({ name: 'derived/small-be.svs', ext: '.svs', bytes: be });
  // An OME-style SubIFD pyramid of JFIF JPEG tiles (libvips here writes no SubIFDs): the repository's TIFF writer.
  const page = async (scale) => {
    const width = Math.round(768 / scale);
    const height = Math.round(640 / scale);
    const raw = await image().resize(width, height).raw().toBuffer();
    const tiles = [];
    for (let y = 0; y < height; y += 128) {
      for (let x = 0; x < width; x += 128) {
        const w = Math.min(128, width - x);
        const h = Math.min(128, height - y);
        const crop = await sharp(raw, { raw: { width, height, channels: 3 } })
          .extract({ left: x, top: y, width: w, height: h })
          .raw()
          .toBuffer();
        tiles.push(
          await sharp(crop, { raw: { width: w, height: h, channels: 3 } })
            .extend({ right: 128 - w, bottom: 128 - h, extendWith: 'copy' })
            .jpeg({ quality: 80 })
            .toBuffer(),
        );
      }
    }
    return { width, height, tileWidth: 128, tileHeight: 128, tiles, compression: 7, photometric: 6 };
  };
  const dir = mkdtempSync(join(tmpdir(), 'tessera-corpus-'));
  try {
    const file = join(dir, 'subifd.tif');
    writeTiledTiff(file, [{ ...(await page(1)), subifds: [await page(2), await page(4)] }]);
    seeds.push({ name: 'derived/subifd-pyramid.tif', ext: '.tif', bytes: readFileSync(file) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const subifd = seeds.at(-1);
  seeds.push({ name: 'derived/subifd-pyramid-be.tif', ext: '.tif', bytes: toBigEndian(subifd.bytes) });
  return seeds;
}

/** A copy of a classic little-endian TIFF whose first ImageDescription is `text` (a new value at the end). */
function withDescription(tiff, text) {
  const value = Buffer.from(`${text}\0`, 'latin1');
  const at = tiff.length + (tiff.length % 2);
  const out = Buffer.concat([tiff, Buffer.alloc(at - tiff.length), value]);
  const ifd = out.readUInt32LE(4);
  const n = out.readUInt16LE(ifd);
  for (let i = 0; i < n; i++) {
    const e = ifd + 2 + 12 * i;
    if (out.readUInt16LE(e) === 270) {
      out.writeUInt16LE(2, e + 2);
      out.writeUInt32LE(value.length, e + 4);
      out.writeUInt32LE(at, e + 8);
      return out;
    }
  }
  // No ImageDescription: take over the tag of the entry for Software or DateTime if any, else keep the file.
  for (let i = 0; i < n; i++) {
    const e = ifd + 2 + 12 * i;
    const tag = out.readUInt16LE(e);
    if (tag === 305 || tag === 306 || tag === 269) {
      out.writeUInt16LE(270, e);
      out.writeUInt16LE(2, e + 2);
      out.writeUInt32LE(value.length, e + 4);
      out.writeUInt32LE(at, e + 8);
      return out;
    }
  }
  return out;
}
