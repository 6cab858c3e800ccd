/**
 * Slides that real archives hold and no library here writes, made from the shared slides at test or benchmark time
 * (nothing is committed): Aperio SVS with JPEG 2000 tiles (compression 33003, YCbCr with Cb and Cr subsampled 2:1
 * horizontally as Aperio writes them, or 33005, RGB), encoded by Debian's OpenJPEG tools (`opj_compress`), and an
 * OME-TIFF with SubIFD levels whose JPEG tiles are JFIF YCbCr while the TIFF says Photometric RGB, as QuPath writes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { writeTiledTiff } from './tiff-writer.mjs';

/** Whether Debian's `opj_compress` (libopenjp2-tools) is installed. */
export const hasOpenJpegTools = spawnSync('opj_compress', ['-h']).status !== null;

/** The tiles of an RGB image, row-major, each `tile x tile` (edge tiles padded by repeating the last row/column). */
async function tilesOf(rgb, width, height, tile) {
  const tiles = [];
  for (let y = 0; y < height; y += tile) {
    for (let x = 0; x < width; x += tile) {
      const w = Math.min(tile, width - x);
      const h = Math.min(tile, height - y);
      const crop = Buffer.alloc(tile * tile * 3);
      for (let r = 0; r < tile; r++) {
        const sr = y + Math.min(r, h - 1);
        for (let c = 0; c < tile; c++) {
          const sc = x + Math.min(c, w - 1);
          const src = (sr * width + sc) * 3;
          crop[(r * tile + c) * 3] = rgb[src];
          crop[(r * tile + c) * 3 + 1] = rgb[src + 1];
          crop[(r * tile + c) * 3 + 2] = rgb[src + 2];
        }
      }
      tiles.push(crop);
    }
  }
  return tiles;
}

/** Y, Cb, Cr planes (JFIF equations) with Cb and Cr averaged over pairs of columns: Aperio 33003's layout. */
function ycbcr422(crop, tile) {
  const half = Math.ceil(tile / 2);
  const y = Buffer.alloc(tile * tile);
  const cb = Buffer.alloc(half * tile);
  const cr = Buffer.alloc(half * tile);
  const clamp = (v) => Math.max(0, Math.min(255, Math.round(v)));
  for (let r = 0; r < tile; r++) {
    for (let c = 0; c < tile; c++) {
      const i = (r * tile + c) * 3;
      y[r * tile + c] = clamp(0.299 * crop[i] + 0.587 * crop[i + 1] + 0.114 * crop[i + 2]);
    }
    for (let c = 0; c < half; c++) {
      let sb = 0;
      let sr = 0;
      let n = 0;
      for (const cc of [2 * c, 2 * c + 1]) {
        if (cc >= tile) continue;
        const i = (r * tile + cc) * 3;
        sb += 128 - 0.168736 * crop[i] - 0.331264 * crop[i + 1] + 0.5 * crop[i + 2];
        sr += 128 + 0.5 * crop[i] - 0.418688 * crop[i + 1] - 0.081312 * crop[i + 2];
        n += 1;
      }
      cb[r * half + c] = clamp(sb / n);
      cr[r * half + c] = clamp(sr / n);
    }
  }
  return Buffer.concat([y, cb, cr]);
}

/** JPEG 2000 codestreams of tiles, by `opj_compress` (lossy, about 1:20, as scanners store them). */
function encodeJ2k(tiles, tile, compression, dir) {
  return tiles.map((crop, i) => {
    const input = join(dir, `t${i}.${compression === 33003 ? 'raw' : 'ppm'}`);
    const output = join(dir, `t${i}.j2k`);
    const args = ['-i', input, '-o', output, '-r', '20', '-n', '5'];
    if (compression === 33003) {
      writeFileSync(input, ycbcr422(crop, tile));
      args.push('-F', `${tile},${tile},3,8,u@1x1:2x1:2x1`, '-mct', '0');
    } else {
      writeFileSync(input, Buffer.concat([Buffer.from(`P6\n${tile} ${tile}\n255\n`), crop]));
    }
    execFileSync('opj_compress', args, { stdio: 'ignore' });
    const bytes = readFileSync(output);
    rmSync(input);
    rmSync(output);
    return bytes;
  });
}

/**
 * Writes an Aperio SVS whose levels (full resolution, then each `downsamples` entry) hold JPEG 2000 tiles of the RGB
 * pixels `rgb` (`width x height`), with compression 33003 or 33005 and an Aperio ImageDescription giving `mpp`.
 */
export async function writeJpeg2000Svs(
  path,
  rgb,
  width,
  height,
  { compression, tile = 240, downsamples = [4], mpp = 0.499 },
) {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-j2k-'));
  try {
    const pages = [];
    for (const ds of [1, ...downsamples]) {
      const w = Math.round(width / ds);
      const h = Math.round(height / ds);
      const pixels =
        ds === 1
          ? rgb
          : await sharp(rgb, { raw: { width, height, channels: 3 } })
              .resize(w, h, { fit: 'fill' })
              .raw()
              .toBuffer();
      const tiles = encodeJ2k(await tilesOf(pixels, w, h, tile), tile, compression, dir);
      const kind = compression === 33003 ? 'J2K/YUV16' : 'J2K/KDU';
      pages.push({
        width: w,
        height: h,
        tileWidth: tile,
        tileHeight: tile,
        tiles,
        compression,
        photometric: 2,
        description:
          ds === 1
            ? `Aperio Image Library v11.2.1\r\n${width}x${height} [0,0 ${width}x${height}] (${tile}x${tile}) ${kind} ` +
              `Q=70|AppMag = 20|MPP = ${mpp}`
            : `Aperio Image Library v11.2.1\r\n${width}x${height} -> ${w}x${h} - |AppMag = 20|MPP = ${mpp}`,
      });
    }
    writeTiledTiff(path, pages);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Writes an OME-TIFF of the RGB pixels `rgb` with SubIFD levels (downsample 2 each), JPEG tiles encoded by sharp
 * (JFIF, YCbCr 4:2:0) and Photometric RGB in every IFD, as QuPath's exporter writes them.
 */
export async function writeJfifOmeTiff(path, rgb, width, height, { tile = 512, levels = 3, mpp = 0.25 } = {}) {
  const pages = [];
  for (let k = 0; k < levels; k++) {
    const w = Math.max(1, Math.floor(width / 2 ** k));
    const h = Math.max(1, Math.floor(height / 2 ** k));
    const pixels =
      k === 0
        ? rgb
        : await sharp(rgb, { raw: { width, height, channels: 3 } })
            .resize(w, h, { fit: 'fill' })
            .raw()
            .toBuffer();
    const tiles = await Promise.all(
      (await tilesOf(pixels, w, h, tile)).map((crop) =>
        sharp(crop, { raw: { width: tile, height: tile, channels: 3 } })
          .jpeg({ quality: 85 })
          .toBuffer(),
      ),
    );
    pages.push({ width: w, height: h, tileWidth: tile, tileHeight: tile, tiles, compression: 7, photometric: 2 });
  }
  const ome =
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">' +
    `<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="${width}" ` +
    `SizeY="${height}" SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="${mpp}" PhysicalSizeY="${mpp}" ` +
    'PhysicalSizeXUnit="µm" PhysicalSizeYUnit="µm"><Channel ID="Channel:0:0" SamplesPerPixel="3"/>' +
    '<TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>';
  writeTiledTiff(path, [{ ...pages[0], description: ome, subifds: pages.slice(1) }]);
}
