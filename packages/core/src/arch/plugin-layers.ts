/**
 * The custom layers of architecture plugins: registering the classes a plugin declares in `layers`, importing plugin
 * modules the way worker threads do, and building a plugin's network with the checks that keep its models loadable
 * everywhere (see {@link buildArchitecture}).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { createRandom } from '../data/random.js';
import { PluginError } from '../errors.js';
import { validatePlugin, type ArchitecturePlugin, type BuildSpec } from './architecture.js';
import { BATCH_NORM_CLASS_NAMES } from './batch-norm.js';
import { encoders } from './encoders/index.js';

function classNameMap(): Record<string, unknown> {
  return tf.serialization.SerializationMap.getMap().classNameMap as Record<string, unknown>;
}

/**
 * tfjs-layers' own classes: those registered when tfjs-layers was loaded, before any plugin could register one (a
 * plugin imports `@tessera/core`, so this module is evaluated first). Reading the map registers nothing.
 */
const BUILTIN_CLASSES: ReadonlySet<string> = new Set([...Object.keys(classNameMap()), ...BATCH_NORM_CLASS_NAMES]);

/** Layer classes seen registered by a plugin's `build()`, so that every later build of it is refused too. */
const registeredDuringBuild = new Map<string, string>();

function registeredClass(className: string): unknown {
  const entry = classNameMap()[className] as [unknown, unknown] | undefined;
  return entry?.[0];
}

/**
 * Registers the layer classes a plugin declares in `layers` with TensorFlow.js's serialisation, so that saved models
 * using them load, and the encoders it declares in `encoders` with core's `encoders`. Idempotent;
 * `ArchitectureRegistry.register` and {@link importPluginModules} call it.
 *
 * @throws PluginError when a class is not a layer of this copy of TensorFlow.js (the plugin uses a second copy of
 * `@tessera/core`), or when another class (a tfjs layer, another plugin's) is registered under the same `className`.
 */
export function registerPluginLayers(plugin: ArchitecturePlugin<any>, source = `architecture "${plugin.name}"`): void {
  for (const cls of plugin.layers ?? []) {
    if (!(cls.prototype instanceof tfl.layers.Layer)) {
      throw new PluginError(
        `Layer class "${cls.className}" of ${source} does not extend the Layer class of this @tessera/core's TensorFlow.js: ` +
          'the plugin uses a second copy of @tessera/core (or of @tensorflow/tfjs-layers).',
        'Import tf and layers from @tessera/core, declare @tessera/core as a peerDependency (not a dependency), and ' +
          'make sure one copy is installed: npm ls @tessera/core.',
      );
    }
    const existing = registeredClass(cls.className);
    if (existing === cls) continue;
    if (existing !== undefined && BUILTIN_CLASSES.has(cls.className)) {
      throw new PluginError(
        `Layer class "${cls.className}" of ${source} has the className of a TensorFlow.js layer.`,
        'Give it a className of its own, prefixed with the plugin name (e.g. "MyNetScaleChannels").',
      );
    }
    if (existing !== undefined) {
      throw new PluginError(
        `Layer class "${cls.className}" of ${source} has the className of another class already registered ` +
          `(${(existing as { name?: string }).name || 'anonymous'}): saved models could not tell the two apart.`,
        'Give each layer class a className of its own, prefixed with the plugin name; if two plugins are copies of ' +
          'one, install only one of them.',
      );
    }
    tf.serialization.registerClass(cls as unknown as tf.serialization.SerializableConstructor<never>);
  }
  for (const encoder of plugin.encoders ?? []) encoders.register(encoder, source);
}

/**
 * Imports plugin modules (URLs or specifiers) as training and whole-slide worker threads do: each module's default
 * export (or named export `plugin`) is called when it is a factory, and the plugin's `layers` are registered.
 *
 * @returns the plugins made, in order.
 * @throws PluginError when a module exports no plugin or breaks the contract.
 */
export async function importPluginModules(specifiers: readonly string[]): Promise<ArchitecturePlugin<object>[]> {
  const plugins: ArchitecturePlugin<object>[] = [];
  for (const specifier of specifiers) {
    const mod = (await import(specifier)) as { default?: unknown; plugin?: unknown };
    const exported = mod.default ?? mod.plugin;
    const made = typeof exported === 'function' ? (exported as () => unknown)() : exported;
    const plugin = validatePlugin(made, `module ${specifier}`);
    registerPluginLayers(plugin, `module ${specifier}`);
    plugins.push(plugin);
  }
  return plugins;
}

function allLayers(model: tfl.LayersModel): tfl.layers.Layer[] {
  return model.layers.flatMap((layer) =>
    layer instanceof tfl.LayersModel ? [layer as tfl.layers.Layer, ...allLayers(layer)] : [layer],
  );
}

/**
 * Calls `plugin.build(spec)` and checks what only a build shows: that the result is a model of this copy of
 * TensorFlow.js, and that every layer class in it loads where `build()` is not called (training workers, whole-slide
 * workers, `evaluate`, `predict`, `export`): tfjs's own classes, core's, the plugin's declared `layers`, or (for
 * plugins written before `layers`) classes registered before `build()` ran, by the factory.
 *
 * @throws PluginError naming the architecture, the layer and its class, and the fix.
 * @example
 * ```ts
 * const model = buildArchitecture(plugin, { inputChannels: 3, numClasses: 2, options, seed: 1 });
 * ```
 */
export function buildArchitecture<O extends object>(
  plugin: ArchitecturePlugin<O>,
  spec: BuildSpec<O>,
): tfl.LayersModel {
  const before = new Set(Object.keys(classNameMap()));
  const model = plugin.build(spec);
  if (!(model instanceof tfl.LayersModel)) {
    throw new PluginError(
      `Expected build() of architecture "${plugin.name}" to return a layers model of this @tessera/core's TensorFlow.js ` +
        `but received ${model === null || typeof model !== 'object' ? String(model) : `an object of class ${(model as object).constructor?.name}`}: ` +
        'the plugin uses a second copy of @tessera/core (or of @tensorflow/tfjs-layers), or returns something else.',
      'Import tf and layers from @tessera/core, declare @tessera/core as a peerDependency, and make sure one copy is ' +
        'installed (npm ls @tessera/core); build() returns layers.model({ inputs, outputs }).',
    );
  }
  const declared = new Set((plugin.layers ?? []).map((cls) => cls.className));
  try {
    for (const layer of allLayers(model)) {
      const className = layer.getClassName();
      if (BUILTIN_CLASSES.has(className) || declared.has(className)) continue;
      const fix =
        `List the class in the plugin object the factory returns: layers: [${layer.constructor.name || className}] ` +
        '(core then registers it wherever a model is loaded), and remove any registerClass call from build().';
      if (registeredClass(className) === undefined) {
        throw new PluginError(
          `Architecture "${plugin.name}" builds layer "${layer.name}" of class "${className}", which is not registered ` +
            'for deserialisation: saved models of it cannot be loaded (training workers, evaluate, predict, export).',
          fix,
        );
      }
      if (!before.has(className) || registeredDuringBuild.get(className) === plugin.name) {
        registeredDuringBuild.set(className, plugin.name);
        throw new PluginError(
          `Architecture "${plugin.name}" registers its layer class "${className}" (layer "${layer.name}") inside build() ` +
            'instead of declaring it in "layers": training workers, evaluate, predict and export load saved models ' +
            'without calling build(), and would fail with "Unknown layer: ' +
            className +
            '".',
          fix,
        );
      }
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  return model;
}

/** Shape of one output check: a `[batch, height, width, inputChannels]` input and the class count. */
export interface OutputCheckShape {
  batch: number;
  height: number;
  width: number;
  inputChannels: number;
  numClasses: number;
}

/**
 * Runs `model` on fixed values in `[0, 1)` of `shape` and checks the build contract's output: `[batch, height, width,
 * numClasses]` probabilities, finite, in `[0, 1]`, summing to 1 per pixel. The conformance kit and the trainer (once,
 * when the network is built) call it, with the same messages.
 *
 * @throws PluginError naming the architecture, its options, the input shape and what came out.
 */
export function checkModelOutput(
  plugin: ArchitecturePlugin<any>,
  options: object,
  model: tfl.LayersModel,
  shape: OutputCheckShape,
  seed = 1,
): void {
  const { batch, height, width, inputChannels, numClasses } = shape;
  const expected = [batch, height, width, numClasses];
  const ctx = `architecture "${plugin.name}" with options ${JSON.stringify(options)} on a [${batch}, ${height}, ${width}, ${inputChannels}] input`;
  tf.tidy(() => {
    const rng = createRandom(seed);
    const values = Float32Array.from({ length: batch * height * width * inputChannels }, () => rng.uniform(0, 1));
    const x = tf.tensor4d(values, [batch, height, width, inputChannels]);
    let y: tf.Tensor;
    try {
      y = model.predict(x) as tf.Tensor;
    } catch (error) {
      throw new PluginError(
        `The model of ${ctx} failed to run: ${(error as Error).message.split('\n')[0]}`,
        'build() must return a model that accepts any height and width that are multiples of inputMultiple().',
      );
    }
    if (Array.isArray(y) || y.shape.length !== 4 || y.shape.some((v, i) => v !== expected[i])) {
      const got = Array.isArray(y) ? `${y.length} outputs` : `[${y.shape.join(', ')}]`;
      throw new PluginError(
        `Expected output shape [${expected.join(', ')}] from ${ctx} but received ${got}.`,
        'The output must have the input\'s height and width and one channel per class: end with a 1x1 convolution of "numClasses" filters.',
      );
    }
    const p = y.dataSync();
    for (let i = 0; i < p.length; i++) {
      if (!(p[i] >= -1e-6 && p[i] <= 1 + 1e-6)) {
        throw new PluginError(
          `Expected probabilities in [0, 1] from ${ctx} but element ${i} is ${p[i]}.`,
          'End the network with a softmax over the class axis (activation: "softmax"): it must output probabilities, not logits.',
        );
      }
    }
    for (let i = 0; i < p.length; i += numClasses) {
      let s = 0;
      for (let k = 0; k < numClasses; k++) s += p[i + k];
      if (Math.abs(s - 1) > 1e-4) {
        throw new PluginError(
          `Expected class probabilities summing to 1 per pixel from ${ctx} but pixel ${i / numClasses} sums to ${s}.`,
          'End the network with a softmax over the class axis.',
        );
      }
    }
  });
}
