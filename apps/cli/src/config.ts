import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { InputNotFoundError, InvalidInputError } from '@tessera/core';

/**
 * Reads a JSON or YAML configuration file whose keys are the command's long option names in camelCase
 * (e.g. `{ "arch": "unet", "epochs": 20, "timeBudget": 25 }`).
 */
export async function readConfig(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new InputNotFoundError(
      `Configuration file ${path} cannot be read: ${(error as Error).message}`,
      'Check the --config path.',
    );
  }
  try {
    const value = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
    if (!value || typeof value !== 'object' || Array.isArray(value))
      throw new Error('expected an object of option names');
    return value as Record<string, unknown>;
  } catch (error) {
    throw new InvalidInputError(
      `Configuration file ${path} is not valid ${/\.ya?ml$/i.test(path) ? 'YAML' : 'JSON'}: ${(error as Error).message}`,
      'Fix the file; keys are option names in camelCase, e.g. {"epochs": 20}.',
    );
  }
}

/**
 * Merges a configuration file under the command-line options: an option given on the command line
 * wins; otherwise the file's value; otherwise the default.
 */
export function mergeConfig<T extends Record<string, unknown>>(
  cli: T,
  fromFile: Record<string, unknown>,
  isFromCli: (key: string) => boolean,
): T {
  const merged: Record<string, unknown> = { ...cli };
  for (const [key, value] of Object.entries(fromFile)) {
    if (!isFromCli(key)) merged[key] = value;
  }
  return merged as T;
}
