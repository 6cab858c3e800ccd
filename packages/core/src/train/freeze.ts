/**
 * Frozen layers (transfer learning): while the freeze is active their weights get no gradient and no update, and
 * their batch-norm layers run in inference mode (they normalise with, and keep, their moving statistics), so the
 * layers stay bit-identical. The set of trainable variables never changes, so optimizers, checkpoints and the
 * training workers see the same variables frozen or not; the freeze only leaves some of them out of a step.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { batchNormLayers, type BatchNormLayer } from './data-parallel.js';

type Call = (inputs: tf.Tensor | tf.Tensor[], kwargs: Record<string, unknown>) => tf.Tensor | tf.Tensor[];

/** The frozen layers of one model replica (the main thread's or a training worker's). */
export class LayerFreeze {
  /** Whether the layers are frozen now (a run may unfreeze them after some epochs). */
  active = false;
  /** Indices, in `model.trainableWeights` order, of the frozen layers' variables. */
  readonly frozenVariables: ReadonlySet<number>;
  private readonly frozenNorms: ReadonlySet<BatchNormLayer>;

  /**
   * @param model the model (nested models included).
   * @param layers names of the layers to freeze; unknown names are an error.
   * @throws Error naming a layer the model does not have.
   */
  constructor(
    model: tfl.LayersModel,
    readonly layers: readonly string[],
  ) {
    const owned = new Set(layerWeights(model, layers));
    this.frozenVariables = new Set(model.trainableWeights.flatMap((w, i) => (owned.has(w) ? [i] : [])));
    const names = new Set(layers);
    const norms = batchNormLayers(model).filter((layer) => names.has(layer.name));
    this.frozenNorms = new Set(norms);
    for (const layer of norms) {
      // tfjs-layers' Layer.apply calls `call`: a frozen batch norm is called as in inference while the freeze is on.
      const target = layer as unknown as { call: Call };
      const call = target.call.bind(target);
      target.call = (inputs, kwargs) => call(inputs, this.active ? { ...kwargs, training: false } : kwargs);
    }
  }

  /** The items (variables, or anything in trainable-variable order) a step updates now. */
  trained<T>(items: readonly T[]): T[] {
    return this.active ? items.filter((_, i) => !this.frozenVariables.has(i)) : [...items];
  }

  /** The batch-norm layers whose moving statistics a step updates now. */
  updatedNorms(layers: readonly BatchNormLayer[]): BatchNormLayer[] {
    return this.active ? layers.filter((layer) => !this.frozenNorms.has(layer)) : [...layers];
  }
}

/**
 * The trainable weights of the named layers of a model (nested models included).
 * @throws Error naming a layer the model does not have.
 */
export function layerWeights(model: tfl.LayersModel, layers: readonly string[]): tfl.LayersModel['trainableWeights'] {
  const names = new Set(layers);
  const found = new Set<string>();
  const weights: tfl.LayersModel['trainableWeights'] = [];
  const visit = (list: tfl.layers.Layer[]) => {
    for (const layer of list) {
      const nested = (layer as unknown as { layers?: tfl.layers.Layer[] }).layers;
      if (Array.isArray(nested)) visit(nested);
      else if (names.has(layer.name)) {
        found.add(layer.name);
        weights.push(...layer.trainableWeights);
      }
    }
  };
  visit(model.layers);
  const missing = layers.filter((name) => !found.has(name));
  if (missing.length) throw new Error(`the model has no layer named ${missing.map((n) => `"${n}"`).join(', ')}`);
  return weights;
}
