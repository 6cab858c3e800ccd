import { InvalidOptionError, setupEngine, type EngineInfo } from '@tessera/core';
import { info, type OutputOptions } from '../progress.js';

/**
 * Initialises the engine and says which one runs and why. `fallback` is the engine a command uses when `--backend`
 * is not given, with the reason printed for it.
 */
export async function startEngine(
  backend: string | undefined,
  out: OutputOptions,
  fallback?: { engine: string; reason: string },
): Promise<EngineInfo> {
  let engine = await setupEngine(backend ?? fallback?.engine);
  if (backend === undefined && fallback) engine = { ...engine, reason: fallback.reason };
  const threads = engine.threads > 0 ? `${engine.threads} thread${engine.threads > 1 ? 's' : ''}` : 'all cores';
  info(out, `engine: ${engine.name} (${threads}; ${engine.reason})`);
  return engine;
}

/** Parses repeated `--arch-option key=value` flags. */
export function parseKeyValues(pairs: string[], flag: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      throw new InvalidOptionError(
        `Expected key=value for ${flag} but received "${pair}".`,
        `Example: ${flag} baseFilters=16`,
      );
    }
    result[pair.slice(0, eq).trim()] = pair.slice(eq + 1).trim();
  }
  return result;
}

/** Throws a clear error when a required option is missing (after merging a config file). */
export function requireOption(value: unknown, flag: string, hint: string): void {
  if (value === undefined || value === null || value === '') {
    throw new InvalidOptionError(`Missing required option ${flag}.`, hint);
  }
}
