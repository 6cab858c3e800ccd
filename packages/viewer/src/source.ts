/**
 * Where the viewer's pixels come from: only `@tessera/tiler`'s slide reader (`openSlide`, `readRegion`,
 * `readThumbnail`), which decides the decoder and the colour of every format it reads. Small images that are not
 * tiled (PNG, JPEG, strip TIFF: libvips decodes the whole file for any region of them) are read once and kept.
 */
import sharp from 'sharp';
import type { RasterImage } from '@tessera/core';
import { openSlide, readRegion, readThumbnail, type Region, type SlideInfo } from '@tessera/tiler';

/** Untiled single-level images up to this many pixels are decoded once and kept in memory. */
export const WHOLE_IMAGE_PIXELS = 36 * 1024 * 1024;

/** A slide (or a label or probability map) and the reads the viewer makes of it. */
export class PixelSource {
  private whole?: Promise<RasterImage>;
  private readonly kept = new Map<string, Promise<RasterImage>>();

  constructor(
    readonly slide: SlideInfo,
    /** Channels read: 1 for label and probability maps, else the slide's (3 for RGB). */
    readonly channels: 1 | 3,
  ) {}

  /** Opens `path` with the tiler's reader. */
  static async open(path: string, channels?: 1 | 3): Promise<PixelSource> {
    const slide = await openSlide(path);
    return new PixelSource(slide, channels ?? (slide.channels === 1 ? 1 : 3));
  }

  /** Whether reads come from one decode of the whole image kept in memory. */
  get inMemory(): boolean {
    const level = this.slide.levels[0];
    return (
      this.slide.levels.length === 1 &&
      level.decoder === 'libvips' &&
      level.tileWidth === null &&
      level.width * level.height <= WHOLE_IMAGE_PIXELS
    );
  }

  /**
   * A region of `level` scaled by `scale` (in (0, 1]), given in scaled pixels and lying inside the scaled level
   * (`round(level size * scale)`).
   */
  async read(region: Region, level: number, scale = 1): Promise<RasterImage> {
    if (!this.inMemory) {
      return readRegion(this.slide, region, { level, scale, channels: this.channels });
    }
    this.whole ??= readRegion(
      this.slide,
      { x: 0, y: 0, width: this.slide.width, height: this.slide.height },
      { channels: this.channels },
    );
    const image = await this.whole;
    const { x, y, width, height } = region;
    const channels = this.channels;
    if (scale === 1) {
      const data = new Uint8Array(width * height * channels);
      for (let r = 0; r < height; r++) {
        const src = ((y + r) * image.width + x) * channels;
        data.set(image.data.subarray(src, src + width * channels), r * width * channels);
      }
      return { data, width, height, channels };
    }
    const left = Math.floor(x / scale);
    const top = Math.floor(y / scale);
    const right = Math.min(image.width, Math.ceil((x + width) / scale));
    const bottom = Math.min(image.height, Math.ceil((y + height) / scale));
    const raw = await sharp(image.data, { raw: { width: image.width, height: image.height, channels } })
      .extract({ left, top, width: right - left, height: bottom - top })
      .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
      .raw()
      .toBuffer();
    return { data: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), width, height, channels };
  }

  /**
   * A region of `level` scaled by `scale` that may reach past the right and bottom of the scaled level, where it
   * mirrors the pixels inside (the tiler's `readRegion`), as the network's context at the slide's edges.
   */
  readMirrored(region: Region, level: number, scale = 1): Promise<RasterImage> {
    return readRegion(this.slide, region, { level, scale, channels: this.channels });
  }

  /** A value made once per source and kept (a failure is not kept). */
  memo(key: string, make: () => Promise<RasterImage>): Promise<RasterImage> {
    let made = this.kept.get(key);
    if (!made) {
      made = make();
      made.catch(() => this.kept.delete(key));
      this.kept.set(key, made);
    }
    return made;
  }

  /** The whole image at `width` x `height` (an overview from the tiler's `readThumbnail`), kept once made. */
  overview(width: number, height: number): Promise<RasterImage> {
    return this.memo(`overview ${width}x${height}`, async () =>
      resizeRaster(await readThumbnail(this.slide, Math.max(width, height), this.channels), width, height),
    );
  }
}

/** `image` resampled to `width` x `height` (Lanczos), or itself when it has that size. */
export async function resizeRaster(image: RasterImage, width: number, height: number): Promise<RasterImage> {
  if (image.width === width && image.height === height) return image;
  const raw = await sharp(image.data, {
    raw: { width: image.width, height: image.height, channels: image.channels as 1 | 3 },
  })
    .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer();
  return { data: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), width, height, channels: image.channels };
}
