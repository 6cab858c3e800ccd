/**
 * Region results on shared storage: a region job writes the rows it computed (class indices and 8-bit probability
 * maps, as the outputs store them) to `<out>/.<stem>.regions/<run>/<stripe>-<row>.region`, under a temporary name
 * that is flushed and renamed when complete, with the SHA-256 of its rows in its header. A region whose file is
 * present and verifies is not computed again; the slide job reads and checks every file before it writes outputs.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { imageStem, writeFileAtomic } from '@tessera/core';
import type { QuantizedBand, SlideRegion } from '@tessera/tiler';

const MAGIC = 'TSREGION';

/** What a region file says about itself. */
export interface RegionHeader {
  format: 'tessera-region';
  version: 1;
  /** The run (slide, model and settings) the region belongs to. */
  run: string;
  region: SlideRegion;
  engine: string;
  /** Probability maps per band (0 without). */
  maps: number;
  bands: { y: number; height: number }[];
  /** SHA-256 of the rows after the header. */
  sha256: string;
  /** Tiles predicted and time spent, for the run's record. */
  tiles: number;
  timings: { readMs: number; inferMs: number; mergeMs: number; wallMs: number };
  host: string;
}

/** The file name stem of a slide's outputs (as predictSlide names them). */
export function outputStem(slide: string): string {
  return imageStem(basename(slide)).replace(/\.ome$/i, '');
}

/** The folder of a run's region files. */
export function regionDir(out: string, slide: string, run: string): string {
  return join(out, `.${outputStem(slide)}.regions`, run);
}

/** The file of one region. */
export function regionFile(out: string, slide: string, run: string, region: SlideRegion): string {
  return join(regionDir(out, slide, run), `${region.stripe}-${region.y}.region`);
}

/** Writes a region's bands atomically: temporary name, flush, rename. */
export async function writeRegionFile(
  path: string,
  header: Omit<RegionHeader, 'format' | 'version' | 'sha256' | 'bands' | 'maps'>,
  bands: QuantizedBand[],
): Promise<RegionHeader> {
  const parts: Uint8Array[] = [];
  for (const band of bands) parts.push(band.labels, ...band.probabilities);
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  const full: RegionHeader = {
    format: 'tessera-region',
    version: 1,
    ...header,
    maps: bands[0]?.probabilities.length ?? 0,
    bands: bands.map((b) => ({ y: b.y, height: b.height })),
    sha256: hash.digest('hex'),
  };
  const json = Buffer.from(JSON.stringify(full));
  const head = Buffer.alloc(12);
  head.write(MAGIC, 0, 'latin1');
  head.writeUInt32LE(json.length, 8);
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, [head, json, ...parts], { durable: true });
  return full;
}

/**
 * Reads a region file and checks it: its run and region, and the SHA-256 of its rows. `null` when the file is missing
 * or does not verify (a half-copied or foreign file is computed again, never used).
 */
export async function readRegionFile(
  path: string,
  run: string,
  region: SlideRegion,
): Promise<{ header: RegionHeader; bands: QuantizedBand[] } | null> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch {
    return null;
  }
  if (bytes.length < 12 || bytes.toString('latin1', 0, 8) !== MAGIC) return null;
  const length = bytes.readUInt32LE(8);
  let header: RegionHeader;
  try {
    header = JSON.parse(bytes.toString('utf8', 12, 12 + length)) as RegionHeader;
  } catch {
    return null;
  }
  const same = (a: SlideRegion, b: SlideRegion) =>
    a.stripe === b.stripe && a.x === b.x && a.y === b.y && a.width === b.width && a.height === b.height;
  if (header.format !== 'tessera-region' || header.run !== run || !same(header.region, region)) return null;
  const payload = bytes.subarray(12 + length);
  if (createHash('sha256').update(payload).digest('hex') !== header.sha256) return null;
  const bands: QuantizedBand[] = [];
  let at = 0;
  for (const { y, height } of header.bands) {
    const n = height * region.width;
    const take = () => {
      const part = new Uint8Array(payload.buffer, payload.byteOffset + at, n);
      at += n;
      return part;
    };
    const labels = take();
    const probabilities = Array.from({ length: header.maps }, take);
    bands.push({
      quantized: true,
      y,
      x: region.x,
      stripe: region.stripe,
      height,
      width: region.width,
      labels,
      probabilities,
    });
  }
  if (at !== payload.length) return null;
  return { header, bands };
}
