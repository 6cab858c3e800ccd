import { describe, expect, it } from 'vitest';
import * as tfl from '@tensorflow/tfjs-layers';
import { ArchitectureRegistry } from './registry.js';
import {
  ARCHITECTURE_API_VERSION,
  defineArchitecture,
  resolveArchitectureOptions,
  type ArchitecturePlugin,
} from './architecture.js';
import { PluginError, UnknownNameError, InvalidOptionError } from '../errors.js';

interface TinyOptions {
  width: number;
  mode: string;
  flag: boolean;
}

function tiny(name = 'tiny-net', apiVersion = ARCHITECTURE_API_VERSION): ArchitecturePlugin<TinyOptions> {
  return defineArchitecture<TinyOptions>({
    name,
    version: '1.0.0',
    apiVersion,
    description: 'test network',
    defaults: { width: 4, mode: 'a', flag: false },
    optionsSchema: {
      width: { type: 'integer', min: 1, max: 64, description: 'width' },
      mode: { type: 'string', choices: ['a', 'b'], description: 'mode' },
      flag: { type: 'boolean', description: 'flag' },
    },
    inputMultiple: () => 1,
    receptiveField: () => 1,
    build: ({ inputChannels, numClasses }) => {
      const input = tfl.input({ shape: [null, null, inputChannels] });
      const output = tfl.layers.conv2d({ filters: numClasses, kernelSize: 1, activation: 'softmax' }).apply(input);
      return tfl.model({ inputs: input, outputs: output as tfl.SymbolicTensor });
    },
  });
}

describe('ArchitectureRegistry', () => {
  it('registers and returns plugins in order', () => {
    const registry = new ArchitectureRegistry().register(tiny('unet')).register(tiny('fcn8s'));
    expect(registry.names()).toEqual(['unet', 'fcn8s']);
    expect(registry.get('fcn8s').name).toBe('fcn8s');
    expect(registry.origin('unet').source).toBe('builtin');
  });

  it('refuses a duplicate name, naming both origins', () => {
    const registry = new ArchitectureRegistry().register(tiny('unet'), { source: 'package @tessera/arch-unet' });
    expect(() => registry.register(tiny('unet'), { source: 'file ./mine.js' })).toThrow(
      'An architecture named "unet" is already registered (from package @tessera/arch-unet); refusing the one from file ./mine.js.',
    );
  });

  it('fails on an unknown name with did-you-mean and the valid choices', () => {
    const registry = new ArchitectureRegistry().register(tiny('unet')).register(tiny('deeplabv3plus'));
    let error: unknown;
    try {
      registry.get('unte');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UnknownNameError);
    expect((error as Error).message).toBe(
      'Unknown architecture "unte". Did you mean "unet"? Valid choices: unet, deeplabv3plus.',
    );
    expect(() => registry.get('resnet')).toThrow('Unknown architecture "resnet". Valid choices: unet, deeplabv3plus.');
  });

  it('refuses a plugin written for another apiVersion, naming both versions', () => {
    const registry = new ArchitectureRegistry();
    expect(() => registry.register(tiny('old-net', 0), { source: 'package tessera-arch-old' })).toThrow(PluginError);
    expect(() => registry.register(tiny('old-net', 99))).toThrow(
      `Architecture "old-net" from builtin was written for plugin API version 99, but this @tessera/core speaks version ${ARCHITECTURE_API_VERSION}.`,
    );
  });

  it('refuses objects that are not plugins', () => {
    const registry = new ArchitectureRegistry();
    expect(() => registry.register({ name: 'Bad Name' } as never)).toThrow(
      'has an invalid name "Bad Name" of type string',
    );
    expect(() => registry.register({ ...tiny(), build: undefined } as never)).toThrow('has no build() function');
  });
});

describe('resolveArchitectureOptions', () => {
  it('fills defaults and coerces command-line strings', () => {
    expect(resolveArchitectureOptions(tiny(), { width: '16', flag: 'true' })).toEqual({
      width: 16,
      mode: 'a',
      flag: true,
    });
  });

  it.each([
    [
      { width: 0 },
      'Expected an integer between 1 and 64 for option "width" of architecture "tiny-net" but received 0 of type number.',
    ],
    [
      { width: '2.5' },
      'Expected an integer between 1 and 64 for option "width" of architecture "tiny-net" but received "2.5" of type string.',
    ],
    [
      { mode: 'c' },
      'Expected one of "a", "b" for option "mode" of architecture "tiny-net" but received "c" of type string.',
    ],
    [
      { flag: 'yes' },
      'Expected true or false for option "flag" of architecture "tiny-net" but received "yes" of type string.',
    ],
    [{ depth: 3 }, 'Unknown option "depth" for architecture "tiny-net". Valid options: width, mode, flag.'],
  ])('rejects %j', (options, message) => {
    expect(() => resolveArchitectureOptions(tiny(), options)).toThrow(InvalidOptionError);
    expect(() => resolveArchitectureOptions(tiny(), options)).toThrow(message);
  });
});
