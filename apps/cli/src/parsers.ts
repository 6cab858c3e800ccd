import { InvalidArgumentError } from 'commander';

// Parsers of flag values. A configuration file's value for a flag must have the type its parser returns (config.ts).

/** A repeatable flag: every value, in order. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
/** An integer flag. */
export function int(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`expected an integer but received "${value}"`);
  return n;
}
/** A number flag. */
export function float(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n))
    throw new InvalidArgumentError(`expected a number but received "${value}"`);
  return n;
}
/** A comma-separated list of numbers. */
export function floatList(value: string): number[] {
  return value.split(',').map((v) => float(v.trim()));
}
