/**
 * Errors raised by `@tessera/queue`. Each subclasses one of `@tessera/core`'s error classes, so the CLI maps it to the
 * same exit code, and carries a stable `code`. Messages name the queue, slide, region or path, what was expected and
 * what came; hints say what to do.
 */
import { InvalidInputError, InvalidOptionError, TesseraError } from '@tessera/core';

function setCode(error: Error, code: string): void {
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
}

/** A queue URL or option is malformed (exit code 2, code `E_QUEUE_OPTION`). */
export class QueueOptionError extends InvalidOptionError {
  constructor(message: string, hint?: string, option?: string | readonly string[]) {
    super(message, hint, option);
    setCode(this, 'E_QUEUE_OPTION');
  }
}

/** The Redis server of a queue cannot be reached (exit code 11, code `E_QUEUE_CONNECTION`). */
export class QueueConnectionError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_QUEUE_CONNECTION', message, { exitCode: 11, hint, cause });
  }
}

/**
 * A worker refuses a job: a path outside its allowed roots or that it cannot read, another model version, an
 * architecture it does not have (exit code 5, code `E_JOB_REFUSED`). Refused jobs are not retried.
 */
export class JobRefusedError extends InvalidInputError {
  constructor(message: string, hint?: string) {
    super(message, hint);
    setCode(this, 'E_JOB_REFUSED');
  }
}

/** A slide of a distributed run failed (exit code 5, code `E_SLIDE_FAILED`): names the slide, region and cause. */
export class SlideFailedError extends InvalidInputError {
  constructor(message: string, hint?: string) {
    super(message, hint);
    setCode(this, 'E_SLIDE_FAILED');
  }
}
