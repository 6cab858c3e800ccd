/**
 * Pretraining tiles from unlabelled images and slides: a small image is cut into a grid of tiles, a slide is sampled
 * at random places where a thumbnail's tissue mask covers most of the tile (glass teaches nothing).
 */
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { InputNotFoundError, type Random, type RasterImage } from '@tessera/core';
import { chooseLevel, openSlide, readRegion, readThumbnail, tissueMask, type SlideInfo } from '@tessera/tiler';

/** File extensions read as images or slides. */
export const SOURCE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.tif', '.tiff', '.svs', '.ndpi', '.scn', '.bif'];

/** What {@link sampleTiles} took from one source. */
export interface SourceTiles {
  path: string;
  /** `image` (cut into a grid) or `slide` (sampled on tissue). */
  kind: 'image' | 'slide';
  tiles: number;
  /** µm/px the tiles were read at, when the source records it. */
  mpp: number | null;
  /** Why the source gave fewer tiles than asked, if it did. */
  note?: string;
}

/** Options of {@link sampleTiles}. */
export interface SampleOptions {
  tile: number;
  channels: 1 | 3;
  /** Read slides at this µm/px (the nearest level, resampled); default: level 0. */
  mpp?: number;
  /** Tiles taken from each slide (and at most from each image). */
  perSource: number;
  /** Share of a tile's thumbnail pixels that must be tissue. */
  minTissue: number;
}

/** The files of `sources`: files as given, folders' image and slide files in name order (not recursive). */
export async function listSources(sources: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const source of sources) {
    let info;
    try {
      info = await stat(source);
    } catch {
      throw new InputNotFoundError(
        `Pretraining input "${source}" does not exist.`,
        'Give folders of images or slides, or slide files.',
      );
    }
    if (!info.isDirectory()) {
      files.push(source);
      continue;
    }
    const entries = (await readdir(source)).filter((f) => SOURCE_EXTENSIONS.includes(extname(f).toLowerCase()));
    files.push(...entries.sort().map((f) => join(source, f)));
  }
  if (files.length === 0) {
    throw new InputNotFoundError(
      `No image or slide files in ${sources.map((s) => `"${s}"`).join(', ')} (extensions ${SOURCE_EXTENSIONS.join(' ')}).`,
      'Give folders of images or slides, or slide files.',
    );
  }
  return files;
}

/** Tiles of every source, and what each gave. */
export async function sampleTiles(
  files: readonly string[],
  o: SampleOptions,
  random: Random,
): Promise<{ tiles: RasterImage[]; sources: SourceTiles[] }> {
  const tiles: RasterImage[] = [];
  const sources: SourceTiles[] = [];
  for (const path of files) {
    const slide = await openSlide(path);
    const { level, scale, mpp } =
      o.mpp !== undefined && slide.mpp
        ? chooseLevel(slide, o.mpp)
        : { level: 0, scale: 1, mpp: slide.mpp ? (slide.mpp.x + slide.mpp.y) / 2 : null };
    const width = Math.floor(slide.levels[level].width * scale);
    const height = Math.floor(slide.levels[level].height * scale);
    const read = (x: number, y: number) =>
      readRegion(slide, { x, y, width: o.tile, height: o.tile }, { level, scale, channels: o.channels });
    if (width < o.tile || height < o.tile) {
      sources.push({
        path,
        kind: 'image',
        tiles: 0,
        mpp,
        note: `${width}x${height} px, smaller than a ${o.tile} px tile`,
      });
      continue;
    }
    // An image of up to perSource tiles: its grid; anything larger is a slide, sampled on tissue.
    const grid = Math.floor(width / o.tile) * Math.floor(height / o.tile);
    if (grid <= o.perSource) {
      for (let y = 0; y + o.tile <= height; y += o.tile) {
        for (let x = 0; x + o.tile <= width; x += o.tile) tiles.push(await read(x, y));
      }
      sources.push({ path, kind: 'image', tiles: grid, mpp });
      continue;
    }
    const found = await tissueTiles(slide, width, height, o, random.fork(path));
    for (const { x, y } of found) tiles.push(await read(x, y));
    sources.push({
      path,
      kind: 'slide',
      tiles: found.length,
      mpp,
      ...(found.length < o.perSource ? { note: `only ${found.length} places with enough tissue` } : {}),
    });
  }
  return { tiles, sources };
}

/** Up to `perSource` random tile places (in the read level's scaled pixels) whose thumbnail area is mostly tissue. */
async function tissueTiles(
  slide: SlideInfo,
  width: number,
  height: number,
  o: SampleOptions,
  random: Random,
): Promise<{ x: number; y: number }[]> {
  const thumbnail = await readThumbnail(slide, 1024, 3);
  const mask = tissueMask(thumbnail);
  const [sx, sy] = [thumbnail.width / width, thumbnail.height / height];
  const places: { x: number; y: number }[] = [];
  for (let attempt = 0; attempt < o.perSource * 50 && places.length < o.perSource; attempt++) {
    const x = random.int(width - o.tile + 1);
    const y = random.int(height - o.tile + 1);
    const [x0, y0] = [Math.floor(x * sx), Math.floor(y * sy)];
    const [x1, y1] = [Math.max(x0 + 1, Math.ceil((x + o.tile) * sx)), Math.max(y0 + 1, Math.ceil((y + o.tile) * sy))];
    let hits = 0;
    for (let ty = y0; ty < Math.min(y1, thumbnail.height); ty++) {
      for (let tx = x0; tx < Math.min(x1, thumbnail.width); tx++) hits += mask[ty * thumbnail.width + tx];
    }
    if (hits >= o.minTissue * (x1 - x0) * (y1 - y0)) places.push({ x, y });
  }
  return places;
}
