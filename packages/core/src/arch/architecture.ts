import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { InvalidOptionError, PluginError, describeValue } from '../errors.js';
import type { EncoderPlugin } from './encoders/encoder.js';
import type { OnnxLayerConverter } from './onnx-converter.js';

/** The version of the architecture plugin interface this release of `@tessera/core` speaks. */
export const ARCHITECTURE_API_VERSION = 1;

/** Declares one option of an architecture: its type, default, limits and meaning. */
export interface OptionSpec {
  type: 'integer' | 'number' | 'boolean' | 'string';
  description: string;
  /** Allowed values, for string (or numeric) options with a fixed set. */
  choices?: readonly (string | number)[];
  /** Inclusive lower bound for numeric options. */
  min?: number;
  /** Inclusive upper bound for numeric options. */
  max?: number;
}

/** What `build()` receives: the data's shape plus fully resolved architecture options. */
export interface BuildSpec<O> {
  /** Channels of the input image, e.g. 1 for grey EM, 3 for RGB H&E. */
  inputChannels: number;
  /** Number of classes; the output has this many probability channels. */
  numClasses: number;
  /** Tile size the model will mostly see (square, pixels). Fully convolutional models accept others. */
  tileSize?: number;
  /** Seed for weight initialisers; the same seed must give the same initial weights. */
  seed?: number;
  /** Resolved options (the plugin's defaults overridden by the user's). */
  options: O;
}

/**
 * An architecture plugin: a plain object made by a factory (`unet()`, `fcn8s()`...).
 *
 * `build(spec)` returns a tfjs-layers model mapping `[batch, height, width, inputChannels]` images to
 * `[batch, height, width, numClasses]` per-pixel class probabilities (softmax), at the input's size,
 * for any height and width that are multiples of `inputMultiple(options)`.
 *
 * @example
 * ```ts
 * export default function myNet(options: Partial<MyOptions> = {}): ArchitecturePlugin<MyOptions> {
 *   return defineArchitecture({ name: 'my-net', version: '1.0.0', apiVersion: ARCHITECTURE_API_VERSION, ... });
 * }
 * ```
 */
export interface ArchitecturePlugin<O extends object = Record<string, unknown>> {
  /** Registry name, lower-case kebab, e.g. `unet`. */
  readonly name: string;
  /** The plugin's own version (semver), recorded in every model manifest. */
  readonly version: string;
  /** The interface version it was written for; must equal {@link ARCHITECTURE_API_VERSION}. */
  readonly apiVersion: number;
  /** One line saying what the network is, with its reference. */
  readonly description: string;
  /** Default options (a factory's own arguments already applied). */
  readonly defaults: O;
  /** Type, limits and meaning of each option. */
  readonly optionsSchema: { readonly [K in keyof O]: OptionSpec };
  /** Height and width of an input must be multiples of this (e.g. `2 ** depth` for U-Net). */
  inputMultiple(options: O): number;
  /**
   * Receptive field in pixels (side of the square of input pixels that can influence one output pixel).
   * The tiler derives tile overlap from it.
   */
  receptiveField(options: O): number;
  /** Builds an untrained model. See the interface description for the contract. */
  build(spec: BuildSpec<O>): tfl.LayersModel;
  /**
   * ONNX converters for the plugin's own layer classes, by class name. Models made only of tfjs's built-in
   * layers need none; without a converter, a custom layer makes ONNX export fail and prediction use tfjs.
   */
  readonly onnxConverters?: Readonly<Record<string, OnnxLayerConverter>>;
  /**
   * The plugin's own layer classes (subclasses of `layers.layers.Layer` with a unique static `className`), for models
   * that use any. Core registers them for deserialisation wherever a model is loaded: the main thread, training
   * workers, whole-slide workers, `evaluate`, `predict` and `export`. Do not register them yourself in `build()`:
   * those places load saved models without calling it. Models made only of tfjs's layers and core's
   * `batchNormalization` need none.
   */
  readonly layers?: readonly LayerClass[];
  /**
   * Options of a smaller, faster variant of the network (e.g. half the filters). When a training run has a time
   * budget that holds too few steps of the default network on the engine at hand, the default trainer measures both
   * and trains this variant instead, for the options the user did not set. Leave it out for a network of fixed size.
   */
  readonly smallOptions?: Partial<O>;
  /**
   * Encoders the plugin brings beyond core's `encoders` (VGG-16, MobileNetV2, ResNet-50). Core registers them with the
   * plugin, so that its own and other architectures can build them by name. Their `layers` and `onnxConverters` must
   * be listed in the plugin's too, like every class its models use.
   */
  readonly encoders?: readonly EncoderPlugin<any>[];
  /**
   * The encoder of a network built with `options` and the pattern its layers' names match (the encoder's
   * `layerPattern`, or the plugin's own for a built-in encoder), for freezing it and for transfer learning. Leave it
   * out for a network without a separable encoder.
   */
  encoder?(options: O): { name: string; layers: RegExp };
}

/** A custom layer class: a subclass of tfjs-layers' `Layer` with a static `className` (prefix it with the plugin's name). */
export type LayerClass = (new (...args: any[]) => tfl.layers.Layer) & { readonly className: string };

/** Identity helper that gives plugin authors types at no runtime cost. */
export function defineArchitecture<O extends object>(plugin: ArchitecturePlugin<O>): ArchitecturePlugin<O> {
  return plugin;
}

/**
 * Validates user options against a plugin's schema and fills in its defaults.
 *
 * @throws InvalidOptionError naming the option, the expected type or range, and the received value.
 */
export function resolveArchitectureOptions<O extends object>(
  plugin: ArchitecturePlugin<O>,
  options: Partial<Record<string, unknown>> = {},
): O {
  const schema = plugin.optionsSchema as Record<string, OptionSpec>;
  const resolved: Record<string, unknown> = { ...(plugin.defaults as Record<string, unknown>) };
  for (const [key, raw] of Object.entries(options)) {
    if (raw === undefined) continue;
    const spec = schema[key];
    if (!spec) {
      throw new InvalidOptionError(
        `Unknown option "${key}" for architecture "${plugin.name}". Valid options: ${Object.keys(schema).join(', ')}.`,
        `Run "tessera archs" to see every option with its default.`,
      );
    }
    resolved[key] = coerceOption(plugin.name, key, spec, raw);
  }
  return resolved as O;
}

function coerceOption(arch: string, key: string, spec: OptionSpec, raw: unknown): unknown {
  let value = raw;
  if (typeof raw === 'string' && spec.type !== 'string') {
    if (spec.type === 'boolean' && (raw === 'true' || raw === 'false')) value = raw === 'true';
    else if (raw.trim() !== '' && !Number.isNaN(Number(raw))) value = Number(raw);
  }
  const where = `option "${key}" of architecture "${arch}"`;
  const bad = (expected: string) =>
    new InvalidOptionError(`Expected ${expected} for ${where} but received ${describeValue(raw)}.`);
  if (spec.type === 'boolean' && typeof value !== 'boolean') throw bad('true or false');
  if (spec.type === 'string' && typeof value !== 'string') throw bad('a string');
  if (spec.type === 'integer' && !Number.isInteger(value)) throw bad(rangeText('an integer', spec));
  if (spec.type === 'number' && (typeof value !== 'number' || !Number.isFinite(value)))
    throw bad(rangeText('a number', spec));
  if (typeof value === 'number') {
    if ((spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)) {
      throw bad(rangeText(spec.type === 'integer' ? 'an integer' : 'a number', spec));
    }
  }
  if (spec.choices && !spec.choices.includes(value as string | number)) {
    throw bad(`one of ${spec.choices.map((c) => JSON.stringify(c)).join(', ')}`);
  }
  return value;
}

function rangeText(kind: string, spec: OptionSpec): string {
  if (spec.min !== undefined && spec.max !== undefined) return `${kind} between ${spec.min} and ${spec.max}`;
  if (spec.min !== undefined) return `${kind} >= ${spec.min}`;
  if (spec.max !== undefined) return `${kind} <= ${spec.max}`;
  return kind;
}

/**
 * Checks the parts of the contract that can be checked without building: name, apiVersion, functions.
 *
 * @throws PluginError naming the plugin and what is wrong.
 */
export function validatePlugin(plugin: unknown, source = 'plugin'): ArchitecturePlugin<object> {
  const p = plugin as Partial<ArchitecturePlugin<object>> | null;
  if (p === null || typeof p !== 'object') {
    throw new PluginError(`The ${source} is not an architecture plugin object: received ${describeValue(plugin)}.`);
  }
  if (typeof p.name !== 'string' || !/^[a-z][a-z0-9-]*$/.test(p.name)) {
    throw new PluginError(
      `Architecture plugin from ${source} has an invalid name ${describeValue(p.name)}: expected lower-case letters, digits and "-".`,
    );
  }
  if (p.apiVersion !== ARCHITECTURE_API_VERSION) {
    throw new PluginError(
      `Architecture "${p.name}" from ${source} was written for plugin API version ${String(p.apiVersion)}, ` +
        `but this @tessera/core speaks version ${ARCHITECTURE_API_VERSION}.`,
      `Install a version of the plugin built for plugin API ${ARCHITECTURE_API_VERSION}.`,
    );
  }
  for (const fn of ['build', 'inputMultiple', 'receptiveField'] as const) {
    if (typeof p[fn] !== 'function') {
      throw new PluginError(`Architecture "${p.name}" from ${source} has no ${fn}() function.`);
    }
  }
  if (typeof p.defaults !== 'object' || typeof p.optionsSchema !== 'object') {
    throw new PluginError(`Architecture "${p.name}" from ${source} must declare defaults and optionsSchema objects.`);
  }
  if (p.layers !== undefined) {
    if (!Array.isArray(p.layers)) {
      throw new PluginError(
        `Expected "layers" of architecture "${p.name}" from ${source} to be an array of layer classes but received ${describeValue(p.layers)}.`,
      );
    }
    p.layers.forEach((cls: unknown, i: number) => {
      const name = (cls as { className?: unknown } | null)?.className;
      if (typeof cls !== 'function' || typeof name !== 'string' || name === '') {
        throw new PluginError(
          `Expected layers[${i}] of architecture "${p.name}" from ${source} to be a layer class with a static className but received ${typeof cls === 'function' ? `class ${cls.name || '(anonymous)'} without a className` : describeValue(cls)}.`,
          'Give the class a unique static className, e.g. static className = "MyNetScaleChannels".',
        );
      }
    });
  }
  return p as ArchitecturePlugin<object>;
}

/** A dummy reference so `tf` type import is kept for docs generation. */
export type ModelInput = tf.Tensor4D;
