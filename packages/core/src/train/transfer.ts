/**
 * Transfer learning: a new network starts from a trained model's weights, layer by layer, matched by name and weight
 * shapes; the layers that cannot match (a head for another class count, a first convolution for another channel
 * count, layers the other network does not have) keep their fresh initialisation, and the run says which.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import type { InitProvenance } from '../model/manifest.js';

/** What {@link transferWeights} did: loaded layers and re-initialised ones with the reason. */
export type TransferReport = Pick<InitProvenance, 'loaded' | 'reinitialised'>;

const shapeOf = (shape: readonly (number | null)[]) => `[${shape.join(', ')}]`;

/**
 * Copies the weights of every layer of `target` that `source` has under the same name with the same weight shapes
 * (all of a layer's weights, or none: a layer is never half loaded). Layers without weights are not listed.
 * @example
 * const { loaded, reinitialised } = transferWeights(pretrained.model, fresh);
 */
export function transferWeights(source: tfl.LayersModel, target: tfl.LayersModel): TransferReport {
  const sources = new Map(source.layers.map((layer) => [layer.name, layer]));
  const report: TransferReport = { loaded: [], reinitialised: [] };
  for (const layer of target.layers) {
    const weights = layer.weights;
    if (weights.length === 0) continue;
    const from = sources.get(layer.name);
    if (!from) {
      report.reinitialised.push({ layer: layer.name, reason: 'no layer of that name in the initial model' });
      continue;
    }
    const mine = weights.map((w) => shapeOf(w.shape));
    const theirs = from.weights.map((w) => shapeOf(w.shape));
    if (mine.join(' ') !== theirs.join(' ')) {
      const differ = mine.findIndex((shape, i) => shape !== theirs[i]);
      const which = differ >= 0 && differ < weights.length ? weights[differ].originalName.split('/').pop() : 'weights';
      report.reinitialised.push({
        layer: layer.name,
        reason:
          mine.length === theirs.length
            ? `${which} ${mine[differ]} here, ${theirs[differ]} in the initial model`
            : `${mine.length} weights here, ${theirs.length} in the initial model`,
      });
      continue;
    }
    layer.setWeights(from.getWeights());
    report.loaded.push(layer.name);
  }
  return report;
}
