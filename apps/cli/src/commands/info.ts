import { basename } from 'node:path';
import { requireTiler } from '../tiler.js';
/** Options of `tessera info`. */
export interface InfoCliOptions {
  json?: boolean;
  quiet?: boolean;
}

/**
 * `tessera info <slide>`: prints the structure of a slide (levels, tiles, compression, vendor, µm/px), after decoding
 * one tile of each level.
 */
export async function infoCommand(path: string, opts: InfoCliOptions): Promise<void> {
  const { compressionName, openSlide, verifySlide } = await requireTiler(`tessera info ${path}`);
  const slide = await openSlide(path);
  await verifySlide(slide); // one tile of each level: a slide predict cannot decode fails here too
  if (opts.json) {
    process.stdout.write(JSON.stringify(slide, null, 2) + '\n');
    return;
  }
  const mpp = slide.mpp
    ? `${slide.mpp.x.toFixed(4)} x ${slide.mpp.y.toFixed(4)} µm/px (${slide.mppSource})`
    : 'unknown (the file does not record a pixel size)';
  const lines = [
    `${slide.path}`,
    `  format:   ${slide.format} (vendor ${slide.vendor}), ${(slide.bytes / 1e6).toFixed(1)} MB`,
    `  size:     ${slide.width} x ${slide.height} px, ${slide.channels} channel${slide.channels > 1 ? 's' : ''}`,
    `  µm/px:    ${mpp}`,
    `  levels:   ${slide.levels.length}`,
    ...slide.levels.map((l) => {
      const tiles = l.tileWidth ? `tiles ${l.tileWidth}x${l.tileHeight}` : 'not tiled';
      const encoding = l.compression === null ? l.encoding : compressionName(l.compression);
      const compression = encoding ? `, ${encoding}` : '';
      const where = l.file ? basename(l.file) : l.subifd >= 0 ? `page ${l.page} subifd ${l.subifd}` : `page ${l.page}`;
      return `    ${l.index}: ${l.width} x ${l.height}, downsample ${l.downsample.toFixed(3)}, ${tiles}${compression} (${where})`;
    }),
  ];
  if (slide.associated.length) {
    lines.push(`  associated images: ${slide.associated.map((a) => `${a.name} ${a.width}x${a.height}`).join(', ')}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}
