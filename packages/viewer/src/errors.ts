/**
 * Errors raised by `@tessera/viewer`. Each subclasses one of `@tessera/core`'s error classes, so the CLI maps it to
 * the same exit code (2 bad option, 4 missing input, 5 invalid input), and adds its own stable `code`. Every message
 * names the input, what was expected and what came; the hint says what to do.
 */
import { InputNotFoundError, InvalidInputError, InvalidOptionError, describeValue } from '@tessera/core';

function setCode(error: Error, code: string): void {
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
}

/** An option of the viewer (port, host, cache size, limits) is out of range. Exit code 2, code `E_VIEWER_OPTION`. */
export class ViewerOptionError extends InvalidOptionError {
  constructor(message: string, hint?: string) {
    super(message, hint);
    setCode(this, 'E_VIEWER_OPTION');
  }
}

/**
 * A predictions folder, or the label map of a slide in it, is missing. Exit code 4, code `E_VIEWER_INPUT`.
 */
export class ViewerInputError extends InputNotFoundError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super(message, hint, cause);
    setCode(this, 'E_VIEWER_INPUT');
  }
}

/**
 * A file of the predictions exists but does not match the slide (another size) or cannot be parsed. Exit code 5,
 * code `E_VIEWER_PREDICTIONS`.
 */
export class ViewerPredictionsError extends InvalidInputError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super(message, hint, cause);
    setCode(this, 'E_VIEWER_PREDICTIONS');
  }
}

/**
 * A request to the viewer's server names a tile, level or pixel that does not exist. The server answers it with
 * HTTP 400 and this message. Code `E_TILE_REQUEST`.
 */
export class TileRequestError extends InvalidOptionError {
  /** HTTP status the server answers with. */
  readonly status = 400;

  constructor(message: string, hint?: string) {
    super(message, hint);
    setCode(this, 'E_TILE_REQUEST');
  }
}

/** A Deep Zoom coordinate outside its range. */
export function badTileCoordinate(
  what: string,
  name: string,
  received: unknown,
  min: number,
  max: number,
): TileRequestError {
  return new TileRequestError(
    `${what}: expected ${name} to be an integer between ${min} and ${max} but received ${describeValue(received)}.`,
    'Tile URLs are <level>/<column>_<row>.<format>; the levels and their tile counts are in /api/slides.',
  );
}

/** The port is taken or cannot be bound. */
export function portUnavailable(host: string, port: number, cause: unknown): ViewerOptionError {
  const reason = (cause as { code?: string })?.code ?? String(cause);
  return new ViewerOptionError(
    `The viewer could not listen on ${host}:${port} (${reason}).`,
    reason === 'EADDRINUSE'
      ? `Another program uses port ${port}: give another one with --port, or --port 0 for any free port.`
      : 'Check --host (an address of this machine, e.g. 0.0.0.0 for every interface) and --port.',
  );
}
