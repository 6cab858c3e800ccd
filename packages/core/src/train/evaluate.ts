import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { LoadedSample } from '../data/dataset.js';
import { predictProbabilities } from '../predict/predict.js';
import type { Predictor } from '../predict/predictor.js';
import { getLoss } from './losses.js';
import { argmaxLabels, ConfusionMatrix } from './metrics.js';

/** Evaluates a model on whole samples: mean loss and the confusion matrix. */
export async function evaluateSamples(
  model: tfl.LayersModel | Predictor,
  samples: LoadedSample[],
  numClasses: number,
  multiple: number,
  lossName: string,
  lossOptions: { classWeights?: number[] } = {},
): Promise<{ loss: number; confusion: ConfusionMatrix }> {
  const lossFn = getLoss(lossName, lossOptions);
  const confusion = new ConfusionMatrix(numClasses);
  let lossSum = 0;
  for (const s of samples) {
    const probs = await predictProbabilities(
      model,
      { data: s.image, width: s.width, height: s.height, channels: s.channels },
      { multiple },
    );
    lossSum += tf.tidy(() => {
      const p = tf.tensor4d(probs, [1, s.height, s.width, numClasses]);
      const y = tf.tensor3d(Int32Array.from(s.labels), [1, s.height, s.width], 'int32');
      return lossFn(p, y).dataSync()[0];
    });
    const predicted = argmaxLabels(probs, numClasses);
    confusion.add(predicted, s.labels);
  }
  return { loss: lossSum / Math.max(1, samples.length), confusion };
}
