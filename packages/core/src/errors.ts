/**
 * Errors raised by `@tessera/core`. Every error has a stable `code`, names the input it is about,
 * says what was expected and what came, and how to fix it. The CLI maps `exitCode` to the process
 * exit status, so scripts can tell failures apart.
 */

/** Base class of every Tessera error. */
export class TesseraError extends Error {
  /** Stable machine-readable code, e.g. `E_UNKNOWN_ARCHITECTURE`. */
  readonly code: string;
  /** Process exit status the CLI uses for this error (2..125). */
  readonly exitCode: number;
  /** A short suggestion of what to do, printed after the message. */
  readonly hint?: string;
  /**
   * The options the error is about, by their names in the SDK (e.g. `tileSize`, `geojson.minArea`), as the message
   * and hint spell them. A front end with other names for its options (the CLI's flags) translates them.
   */
  readonly options: readonly string[];

  constructor(
    code: string,
    message: string,
    options: { exitCode?: number; hint?: string; cause?: unknown; option?: string | readonly string[] } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.exitCode = options.exitCode ?? 1;
    this.hint = options.hint;
    this.options =
      options.option === undefined ? [] : typeof options.option === 'string' ? [options.option] : options.option;
  }
}

/**
 * An option or argument has a value outside what is allowed. Exit code 2. `option` names it (or them) in the SDK's
 * vocabulary (see {@link TesseraError.options}).
 */
export class InvalidOptionError extends TesseraError {
  constructor(message: string, hint?: string, option?: string | readonly string[]) {
    super('E_INVALID_OPTION', message, { exitCode: 2, hint, option });
  }
}

/** A name was looked up in a registry (architecture, loss, optimizer...) and not found. Exit code 3. */
export class UnknownNameError extends TesseraError {
  constructor(message: string, hint?: string) {
    super('E_UNKNOWN_NAME', message, { exitCode: 3, hint });
  }
}

/** An input file or folder is missing or unreadable. Exit code 4. */
export class InputNotFoundError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_INPUT_NOT_FOUND', message, { exitCode: 4, hint, cause });
  }
}

/** An input file exists but its content is invalid, corrupt or unsupported. Exit code 5. */
export class InvalidInputError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_INVALID_INPUT', message, { exitCode: 5, hint, cause });
  }
}

/** A data set is inconsistent: missing masks, masks of the wrong size, unknown class values. Exit code 6. */
export class DatasetError extends TesseraError {
  constructor(message: string, hint?: string) {
    super('E_DATASET', message, { exitCode: 6, hint });
  }
}

/** A model folder is missing parts, was tampered with, or comes from an incompatible version. Exit code 7. */
export class ModelFormatError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_MODEL_FORMAT', message, { exitCode: 7, hint, cause });
  }
}

/**
 * A saved model has a layer whose class is not registered here: the plugin that made it is not installed, or does
 * not declare the class in its `layers`. Exit code 7, like every model folder that cannot be read.
 */
export class UnknownLayerError extends ModelFormatError {
  /** The unregistered layer class, e.g. `TesseraAtrousConv2D`. */
  readonly className: string;

  constructor(className: string, message: string, hint?: string, cause?: unknown) {
    super(message, hint, cause);
    this.className = className;
  }
}

/** A plugin breaks its contract (wrong apiVersion, wrong output shape, duplicate name). Exit code 8. */
export class PluginError extends TesseraError {
  constructor(message: string, hint?: string) {
    super('E_PLUGIN', message, { exitCode: 8, hint });
  }
}

/** An engine (tfjs backend) was asked for and is not available here. Exit code 9. */
export class EngineError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_ENGINE', message, { exitCode: 9, hint, cause });
  }
}

/** An output could not be written. Exit code 10. */
export class OutputError extends TesseraError {
  constructor(message: string, hint?: string, cause?: unknown) {
    super('E_OUTPUT', message, { exitCode: 10, hint, cause });
  }
}

/** Formats a value for an error message: strings quoted, others as JSON, with their type. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return `"${value}" of type string`;
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  if (text.length > 80) text = text.slice(0, 77) + '...';
  return `${text} of type ${Array.isArray(value) ? 'array' : typeof value}`;
}

/** Levenshtein distance, used for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length];
}

/** The closest of `choices` to `name`, when it is close enough to be a likely typo. */
export function didYouMean(name: string, choices: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const choice of choices) {
    const d = editDistance(name.toLowerCase(), choice.toLowerCase());
    if (d < bestDistance) {
      bestDistance = d;
      best = choice;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** Builds an UnknownNameError: `Unknown architecture "unte". Did you mean "unet"? Valid choices: unet, fcn8s.` */
export function unknownName(kind: string, name: string, choices: readonly string[], hint?: string): UnknownNameError {
  const suggestion = didYouMean(name, choices);
  const list = choices.length ? choices.join(', ') : '(none registered)';
  return new UnknownNameError(
    `Unknown ${kind} "${name}".${suggestion ? ` Did you mean "${suggestion}"?` : ''} Valid choices: ${list}.`,
    hint,
  );
}
