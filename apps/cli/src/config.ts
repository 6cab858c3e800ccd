import { readFile } from 'node:fs/promises';
import type { Command, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InputNotFoundError, InvalidInputError } from '@tessera/core';
import { collect, float, floatList, int } from './parsers.js';

/** The type a configuration file's value must have for one flag, from the flag's parser. */
function optionSchema(option: Option): z.ZodType {
  if (option.negate || (!option.required && !option.optional)) return z.boolean();
  if (option.argChoices) return z.enum(option.argChoices as [string, ...string[]]);
  switch (option.parseArg as unknown) {
    case int:
      return z.number().int();
    case float:
      return z.number();
    case floatList:
      return z.array(z.number());
    case collect:
      return z.array(z.string());
    default:
      return z.string();
  }
}

/**
 * The schema of a command's configuration file: one key per long flag in camelCase (`--time-budget` is `timeBudget`),
 * typed as the flag's parser types it; the keys in `objects` also take an object (e.g. `archOption` as
 * `{"baseFilters": 16}` where the flag takes `key=value` strings). Unknown keys are refused.
 */
export function configSchema(cmd: Command, objects: string[] = []): z.ZodType<Record<string, unknown>> {
  const shape: Record<string, z.ZodType> = {};
  for (const option of cmd.options) {
    const key = option.attributeName();
    if (key === 'config' || key === 'help') continue;
    shape[key] = objects.includes(key)
      ? z.union([optionSchema(option), z.record(z.string(), z.unknown())])
      : optionSchema(option);
  }
  return z.strictObject(shape).partial() as unknown as z.ZodType<Record<string, unknown>>;
}

const kebab = (key: string) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** One line per problem, naming the key (and its flag), what it must be and what the file holds. */
function describeIssues(issues: z.core.$ZodIssue[], value: Record<string, unknown>, keys: string[]): string[] {
  return issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const names = issue.keys.map((k) => `"${k}"`).join(', ');
      return `unknown key${issue.keys.length > 1 ? 's' : ''} ${names} (valid keys: ${keys.join(', ')})`;
    }
    const key = String(issue.path[0]);
    let received: unknown = value;
    for (const part of issue.path) received = (received as Record<PropertyKey, unknown>)?.[part as PropertyKey];
    const where = issue.path.length > 1 ? `${key}[${issue.path.slice(1).join('][')}]` : key;
    const expected =
      issue.code === 'invalid_type'
        ? `expected ${issue.expected === 'int' ? 'an integer' : issue.expected === 'array' ? 'a list' : `a ${issue.expected}`}`
        : issue.code === 'invalid_value'
          ? `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`
          : issue.message;
    return `"${where}" (${kebab(key)}) ${expected} but received ${JSON.stringify(received) ?? 'nothing'}`;
  });
}

/**
 * Checks a configuration file's options against `schema` (see {@link configSchema}).
 * @throws InvalidInputError naming every unknown key and every value of the wrong type.
 */
export function validateConfig(
  path: string,
  value: Record<string, unknown>,
  schema: z.ZodType<Record<string, unknown>>,
  keys: string[],
): Record<string, unknown> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  throw new InvalidInputError(
    `Configuration file ${path}: ${describeIssues(result.error.issues, value, keys).join('; ')}.`,
    'Fix the file; keys are the command\'s long flags in camelCase, with the types the flags take, e.g. {"epochs": 20, "timeBudget": 25}.',
  );
}

/**
 * Reads a JSON or YAML configuration file whose keys are the command's long option names in camelCase
 * (e.g. `{ "arch": "unet", "epochs": 20, "timeBudget": 25 }`), checked against the command's flags
 * ({@link configSchema}).
 */
export async function readConfig(path: string, cmd: Command, objects: string[] = []): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new InputNotFoundError(
      `Configuration file ${path} cannot be read: ${(error as Error).message}`,
      'Check the --config path.',
    );
  }
  let value: unknown;
  try {
    value = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
    if (!value || typeof value !== 'object' || Array.isArray(value))
      throw new Error('expected an object of option names');
  } catch (error) {
    throw new InvalidInputError(
      `Configuration file ${path} is not valid ${/\.ya?ml$/i.test(path) ? 'YAML' : 'JSON'}: ${(error as Error).message}`,
      'Fix the file; keys are option names in camelCase, e.g. {"epochs": 20}.',
    );
  }
  const keys = cmd.options.map((o) => o.attributeName()).filter((k) => k !== 'config' && k !== 'help');
  return validateConfig(path, value as Record<string, unknown>, configSchema(cmd, objects), keys);
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
