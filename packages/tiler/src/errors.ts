/**
 * Errors raised by `@tessera/tiler`. Each subclasses one of `@tessera/core`'s error classes, so the CLI maps it to
 * the same exit code (5 invalid input, 2 bad option, 10 output; 130 for an interrupted prediction), and adds its own
 * stable `code`. Every message names the file or option, what was expected, what came, and the hint says what to do.
 */
import { InvalidInputError, InvalidOptionError, TesseraError, describeValue } from '@tessera/core';

function setCode(error: Error, code: string): void {
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
}

/**
 * A slide file exists but cannot be read as a slide: not a TIFF or image at all, truncated, or using an encoding
 * Tessera cannot decode (e.g. JPEG 2000 in Aperio SVS). Exit code 5, code `E_SLIDE_FORMAT`, or the more precise
 * `E_SLIDE_COMPRESSION` (a compression Tessera cannot decode) and `E_SLIDE_TRUNCATED` (the file was cut short).
 */
export class SlideFormatError extends InvalidInputError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super(message, hint, cause);
    setCode(this, 'E_SLIDE_FORMAT');
  }
}

/** A region or level asked of a slide lies outside it. Exit code 2, code `E_SLIDE_REGION`. */
export class SlideRegionError extends InvalidOptionError {
  constructor(message: string, hint?: string) {
    super(message, hint);
    setCode(this, 'E_SLIDE_REGION');
  }
}

/** An option of the tiler (tile, overlap, workers, batch, mpp) is out of range. Exit code 2, code `E_TILER_OPTION`. */
export class TilerOptionError extends InvalidOptionError {
  constructor(message: string, hint?: string, option?: string | readonly string[]) {
    super(message, hint, option);
    setCode(this, 'E_TILER_OPTION');
  }
}

/**
 * TIFF compression codes Tessera can decode, with their names: JPEG and JPEG 2000 by its own tile decoder, the
 * lossless codecs through libvips/libtiff.
 */
export const SUPPORTED_COMPRESSIONS: Readonly<Record<number, string>> = {
  1: 'none',
  5: 'LZW',
  7: 'JPEG',
  8: 'Deflate',
  32773: 'PackBits',
  32946: 'Deflate',
  33003: 'Aperio JPEG 2000 (YCbCr)',
  33005: 'Aperio JPEG 2000 (RGB)',
  34712: 'JPEG 2000',
  50000: 'Zstandard',
  50001: 'WebP',
};

/** Names of compression codes seen in slides that Tessera cannot decode. */
const UNSUPPORTED_COMPRESSIONS: Readonly<Record<number, string>> = {
  6: 'old-style JPEG',
  34892: 'lossy JPEG (DNG)',
  65000: 'Hamamatsu NDPI JPEG',
};

/** Human name of a TIFF compression code. */
export function compressionName(code: number): string {
  return SUPPORTED_COMPRESSIONS[code] ?? UNSUPPORTED_COMPRESSIONS[code] ?? `compression ${code}`;
}

/** The file is not a TIFF, PNG or JPEG, or its structure cannot be parsed. */
export function notASlide(path: string, reason: string, cause?: unknown): SlideFormatError {
  return new SlideFormatError(
    `Slide "${path}" could not be opened: expected a tiled or pyramidal TIFF/BigTIFF, Aperio SVS, OME-TIFF, ` +
      `PNG or JPEG, but ${reason}.`,
    'Check that the file was copied completely (compare its size or checksum with the original) and that it opens ' +
      'in QuPath or `vipsheader`; convert other formats with `vips tiffsave in out.tif --tile --pyramid`.',
    cause,
  );
}

/** A level of the slide uses a compression libvips cannot decode (code `E_SLIDE_COMPRESSION`). */
export function unsupportedCompression(path: string, level: number, code: number): SlideFormatError {
  const error = new SlideFormatError(
    `Slide "${path}" level ${level} uses ${compressionName(code)} (TIFF compression ${code}); expected one of ` +
      `${[...new Set(Object.values(SUPPORTED_COMPRESSIONS))].join(', ')}.`,
    'Convert the slide to a JPEG pyramidal TIFF first, e.g. with QuPath (File > Export > OME-TIFF), or with ' +
      'libvips through its OpenSlide loader where OpenSlide reads the file: `vips tiffsave in.svs out.tif --tile ' +
      "--pyramid --compression jpeg --Q 90` (`vipsheader -f vips-loader in.svs` must say openslideload; libvips's " +
      'own TIFF loader decodes such tiles in false colour).',
  );
  setCode(error, 'E_SLIDE_COMPRESSION');
  return error;
}

/** The file ends before the tile data its directory points to (code `E_SLIDE_TRUNCATED`). */
export function truncatedSlide(path: string, level: number, end: number, size: number): SlideFormatError {
  const error = new SlideFormatError(
    `Slide "${path}" is truncated: level ${level} has tile data up to byte ${end} but the file has ${size} bytes.`,
    'Copy or download the slide again; the file was cut short.',
  );
  setCode(error, 'E_SLIDE_TRUNCATED');
  return error;
}

/** A region outside the level. */
export function regionOutside(
  path: string,
  level: number,
  region: { x: number; y: number; width: number; height: number },
  levelSize: { width: number; height: number },
): SlideRegionError {
  return new SlideRegionError(
    `readRegion("${path}"): expected a region with positive integer size starting inside level ${level} ` +
      `(${levelSize.width}x${levelSize.height}) but received x ${region.x}, y ${region.y}, width ${region.width}, ` +
      `height ${region.height}.`,
    'Clip the region to the level size (see `tessera info <slide>`).',
  );
}

/** A level index that does not exist. */
export function noSuchLevel(path: string, level: unknown, count: number): SlideRegionError {
  return new SlideRegionError(
    `Slide "${path}": expected a level between 0 and ${count - 1} but received ${describeValue(level)}.`,
    'List the levels with `tessera info <slide>`.',
  );
}

/**
 * The partial work of an interrupted slide prediction (`<out>/.<stem>.partial/`) cannot be resumed: it was made with
 * other settings (model, slide, tile, overlap, level...) or is damaged. Exit code 2, code `E_PARTIAL_WORK`.
 */
export class PartialWorkError extends InvalidOptionError {
  /** The partial work folder. */
  readonly dir: string;

  constructor(dir: string, message: string, option?: string) {
    super(
      message,
      `Drop --resume to predict the slide from the start (the folder is then replaced), or delete "${dir}".`,
      option,
    );
    setCode(this, 'E_PARTIAL_WORK');
    this.dir = dir;
  }
}

/** Partial work made with another value of a setting. */
export function partialMismatch(
  dir: string,
  setting: string,
  was: unknown,
  now: unknown,
  option?: string,
): PartialWorkError {
  const show = (value: unknown) => {
    const text = value === undefined ? 'unknown' : JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  };
  return new PartialWorkError(
    dir,
    `Cannot resume from "${dir}": it was made with ${setting} ${show(was)}, but this run has ${setting} ${show(now)}.`,
    option,
  );
}

/** Partial work whose journal or finished rows cannot be used. */
export function partialDamaged(dir: string, reason: string): PartialWorkError {
  return new PartialWorkError(dir, `Cannot resume from "${dir}": ${reason}.`);
}

/**
 * A slide prediction was stopped by its `AbortSignal` (Ctrl-C or SIGTERM in the CLI). The rows finished before the
 * stop are kept in the partial work folder, and a run with `resume` continues from there. Exit code 130 (as a shell
 * reports SIGINT), code `E_INTERRUPTED`.
 */
export class PredictionInterruptedError extends TesseraError {
  /** The partial work folder, or `null` when no row was finished (nothing is kept). */
  readonly partial: string | null;
  /** Output rows finished and kept, of `height`, in stripe `stripe` (0-based; earlier stripes are finished). */
  readonly rows: number;
  readonly height: number;
  readonly stripe: number;
  readonly stripes: number;

  constructor(
    slide: string,
    partial: string | null,
    rows: number,
    height: number,
    { stripe = 0, stripes = 1 }: { stripe?: number; stripes?: number } = {},
  ) {
    const where = stripes > 1 ? ` of stripe ${stripe + 1} of ${stripes}` : '';
    super(
      'E_INTERRUPTED',
      partial === null
        ? `Prediction of "${slide}" was interrupted before any row of the output was finished; nothing was kept.`
        : `Prediction of "${slide}" was interrupted after ${rows} of ${height} output rows${where}; the finished ` +
            `rows are kept in "${partial}".`,
      {
        exitCode: 130,
        hint:
          partial === null
            ? 'Run the same command again.'
            : `Run the same command with --resume to continue from row ${rows}${where}.`,
      },
    );
    this.partial = partial;
    this.rows = rows;
    this.height = height;
    this.stripe = stripe;
    this.stripes = stripes;
  }
}
