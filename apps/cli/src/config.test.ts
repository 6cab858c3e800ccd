import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidInputError } from '@tessera/core';
import { readConfig } from './config.js';
import { buildProgram } from './main.js';

const train = buildProgram().commands.find((c) => c.name() === 'train')!;
const dir = mkdtempSync(join(tmpdir(), 'tessera-config-'));
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
};

describe('configuration files', () => {
  it('accepts the flags in camelCase with the types the flags take, JSON or YAML', async () => {
    const json = file('ok.json', '{"epochs": 20, "timeBudget": 2.5, "schedule": "cosine", "classWeights": [1, 3]}');
    expect(await readConfig(json, train, ['archOption'])).toEqual({
      epochs: 20,
      timeBudget: 2.5,
      schedule: 'cosine',
      classWeights: [1, 3],
    });
    const yaml = file('ok.yaml', 'arch: unet\narchOption:\n  baseFilters: 16\naugment: false\nresume: true\n');
    expect(await readConfig(yaml, train, ['archOption', 'augment'])).toEqual({
      arch: 'unet',
      archOption: { baseFilters: 16 },
      augment: false,
      resume: true,
    });
  });

  it('refuses unknown keys and values of the wrong type, naming each key, its flag and the valid choices', async () => {
    const bad = file('bad.json', '{"epochz": 3, "epochs": 2.5, "lr": "fast", "classWeights": [1, "x"]}');
    const error = await readConfig(bad, train).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidInputError);
    const message = (error as Error).message;
    expect(message).toContain(`Configuration file ${bad}`);
    expect(message).toMatch(/unknown key "epochz" \(valid keys: arch, archOption, .*epochs/);
    expect(message).toContain('"epochs" (--epochs) expected an integer but received 2.5');
    expect(message).toContain('"lr" (--lr) expected a number but received "fast"');
    expect(message).toContain('"classWeights[1]" (--class-weights) expected a number but received "x"');
  });
});
