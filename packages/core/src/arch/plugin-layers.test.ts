import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupEngine } from '../engine/engine.js';
import { PluginError, UnknownLayerError } from '../errors.js';
import { deserializeModel, serializeModel } from '../model/model-io.js';
import {
  ARCHITECTURE_API_VERSION,
  defineArchitecture,
  validatePlugin,
  type ArchitecturePlugin,
} from './architecture.js';
import { buildArchitecture, checkModelOutput, importPluginModules, registerPluginLayers } from './plugin-layers.js';
import { ArchitectureRegistry } from './registry.js';

/** A layer of a plugin's own: multiplies its input by a constant. Each test makes its own class (own className). */
function scaleClass(className: string) {
  return class Scale extends tfl.layers.Layer {
    static className = className;
    readonly factor: number;
    constructor(args: { factor: number; name?: string }) {
      super(args);
      this.factor = args.factor;
    }
    override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
      return tf.mul(Array.isArray(inputs) ? inputs[0] : inputs, this.factor);
    }
    override getConfig() {
      return { ...super.getConfig(), factor: this.factor };
    }
  };
}

type Layer = ReturnType<typeof scaleClass>;

/** A plugin whose network uses `Scale`, registered as `how` says. */
function pluginWith(
  Scale: Layer,
  how: 'layers' | 'factory' | 'build' | 'nowhere',
  head: 'softmax' | 'linear' = 'softmax',
) {
  if (how === 'factory') tf.serialization.registerClass(Scale as never);
  return defineArchitecture<{ classesOverride: number }>({
    name: `scale-${how}`,
    version: '1.0.0',
    apiVersion: ARCHITECTURE_API_VERSION,
    description: 'test network with a custom layer',
    defaults: { classesOverride: 0 },
    optionsSchema: { classesOverride: { type: 'integer', min: 0, description: 'hard-coded class count (0: none)' } },
    inputMultiple: () => 1,
    receptiveField: () => 1,
    ...(how === 'layers' ? { layers: [Scale] } : {}),
    build: ({ inputChannels, numClasses, options }) => {
      if (how === 'build') tf.serialization.registerClass(Scale as never);
      const input = tfl.input({ shape: [null, null, inputChannels] });
      const scaled = new Scale({ factor: 2, name: 'scale' }).apply(input) as tfl.SymbolicTensor;
      const output = tfl.layers
        .conv2d({ filters: options.classesOverride || numClasses, kernelSize: 1, activation: head })
        .apply(scaled);
      return tfl.model({ inputs: input, outputs: output as tfl.SymbolicTensor });
    },
  });
}

const spec = { inputChannels: 3, numClasses: 2, options: { classesOverride: 0 }, seed: 1 };

describe('plugin layers', () => {
  beforeAll(async () => {
    await setupEngine('cpu');
  });

  it('validatePlugin refuses "layers" that are not classes with a className', () => {
    const base = pluginWith(scaleClass('TestScaleA'), 'layers');
    expect(() => validatePlugin({ ...base, layers: 'Scale' }, 'file x.js')).toThrow(
      'Expected "layers" of architecture "scale-layers" from file x.js to be an array of layer classes but received "Scale" of type string.',
    );
    class NoName extends tfl.layers.Layer {}
    expect(() => validatePlugin({ ...base, layers: [NoName] }, 'file x.js')).toThrow(
      'Expected layers[0] of architecture "scale-layers" from file x.js to be a layer class with a static className but received class NoName without a className.',
    );
  });

  it('registering a plugin registers its declared layers, so a saved model loads without build()', async () => {
    const Scale = scaleClass('TestScaleDeclared');
    const plugin = pluginWith(Scale, 'layers');
    const model = buildArchitecture(plugin, spec);
    const { topology, weights } = await serializeModel(model);
    // Not registered yet: loading names the class.
    await expect(deserializeModel(topology, weights, 'the test model')).rejects.toThrow(UnknownLayerError);
    await expect(deserializeModel(topology, weights, 'the test model')).rejects.toThrow(
      'Could not rebuild the network of the test model: it has a layer of class "TestScaleDeclared", which no loaded plugin registers.',
    );
    new ArchitectureRegistry().register(plugin, { source: 'file scale.js' });
    const loaded = await deserializeModel(topology, weights, 'the test model');
    expect(loaded.layers.map((l) => l.getClassName())).toContain('TestScaleDeclared');
    model.dispose();
    loaded.dispose();
  });

  it('buildArchitecture refuses a layer class registered inside build(), every time, naming the fix', () => {
    const plugin = pluginWith(scaleClass('TestScaleInBuild'), 'build');
    const message =
      'Architecture "scale-build" registers its layer class "TestScaleInBuild" (layer "scale") inside build() instead of declaring it in "layers"';
    expect(() => buildArchitecture(plugin, spec)).toThrow(message);
    // The class is registered now; a second build is refused all the same.
    expect(() => buildArchitecture(plugin, spec)).toThrow(message);
    try {
      buildArchitecture(plugin, spec);
    } catch (error) {
      expect((error as PluginError).hint).toContain('layers: [Scale]');
    }
  });

  it('buildArchitecture refuses a layer class registered nowhere, and accepts factory registration (older plugins)', () => {
    expect(() => buildArchitecture(pluginWith(scaleClass('TestScaleNowhere'), 'nowhere'), spec)).toThrow(
      'Architecture "scale-nowhere" builds layer "scale" of class "TestScaleNowhere", which is not registered for deserialisation',
    );
    const model = buildArchitecture(pluginWith(scaleClass('TestScaleFactory'), 'factory'), spec);
    expect(model.outputs[0].shape).toEqual([null, null, null, 2]);
    model.dispose();
  });

  it('registerPluginLayers refuses a class of another TensorFlow.js copy and a className of a tfjs layer', () => {
    class Foreign {
      static className = 'TestForeign';
    }
    const plugin = {
      ...pluginWith(scaleClass('TestScaleB'), 'layers'),
      layers: [Foreign],
    } as unknown as ArchitecturePlugin;
    expect(() => registerPluginLayers(plugin, 'file foreign.js')).toThrow(
      'Layer class "TestForeign" of file foreign.js does not extend the Layer class of this @tessera/core\'s TensorFlow.js',
    );
    const clash = {
      ...pluginWith(scaleClass('Conv2D'), 'nowhere'),
      layers: [scaleClass('Conv2D')],
    } as ArchitecturePlugin<any>;
    expect(() => registerPluginLayers(clash)).toThrow('has the className of a TensorFlow.js layer');
    const first = { ...pluginWith(scaleClass('TestScaleTwice'), 'nowhere'), layers: [scaleClass('TestScaleTwice')] };
    registerPluginLayers(first as ArchitecturePlugin<any>);
    registerPluginLayers(first as ArchitecturePlugin<any>); // the same class again: nothing to do
    const second = { ...first, layers: [scaleClass('TestScaleTwice')] } as ArchitecturePlugin<any>;
    expect(() => registerPluginLayers(second, 'file copy.js')).toThrow(
      'Layer class "TestScaleTwice" of file copy.js has the className of another class already registered (Scale)',
    );
  });

  it("checkModelOutput refuses logits and a hard-coded class count with the kit's messages", () => {
    const logits = pluginWith(scaleClass('TestScaleLogits'), 'layers', 'linear');
    const model = buildArchitecture(logits, spec);
    const shape = { batch: 1, height: 8, width: 8, inputChannels: 3, numClasses: 2 };
    expect(() => checkModelOutput(logits, {}, model, shape)).toThrow(
      /Expected (probabilities in \[0, 1\]|class probabilities summing to 1 per pixel) from architecture "scale-layers" with options \{\} on a \[1, 8, 8, 3\] input/,
    );
    model.dispose();
    const fixed = pluginWith(scaleClass('TestScaleThree'), 'layers');
    const three = buildArchitecture(fixed, { ...spec, options: { classesOverride: 3 } });
    expect(() => checkModelOutput(fixed, { classesOverride: 3 }, three, shape)).toThrow(
      'Expected output shape [1, 8, 8, 2] from architecture "scale-layers" with options {"classesOverride":3} on a [1, 8, 8, 3] input but received [1, 8, 8, 3].',
    );
    three.dispose();
  });

  describe('importPluginModules', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'tessera-plugin-modules-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("calls each module's factory and checks what it makes, as the worker threads do", async () => {
      const good = join(dir, 'good.mjs');
      await writeFile(good, 'export default () => globalThis.__tesseraTestPlugin;\n');
      (globalThis as Record<string, unknown>).__tesseraTestPlugin = pluginWith(scaleClass('TestScaleModule'), 'layers');
      const [plugin] = await importPluginModules([pathToFileURL(good).href]);
      expect(plugin.name).toBe('scale-layers');
      expect(tf.serialization.SerializationMap.getMap().classNameMap.TestScaleModule).toBeDefined();
      const bad = join(dir, 'bad.mjs');
      await writeFile(bad, 'export default () => ({ name: "bad", apiVersion: 99 });\n');
      await expect(importPluginModules([pathToFileURL(bad).href])).rejects.toThrow(
        'was written for plugin API version 99',
      );
    });
  });
});
