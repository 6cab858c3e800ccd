import * as layers from '@tensorflow/tfjs-layers';
import { applyLayer, convBnAct } from '../blocks.js';
import { INPUT_REACH, reachConv, reachUnion, type Reach } from '../reach.js';
import { AtrousConv2D, atrousOnnxConverter } from './atrous.js';
import { defineEncoder, stageBlocks, type EncoderPlugin, type PlannedBlock } from './encoder.js';

/** Options of the ResNet-50 encoder. */
export interface ResNet50Options {
  /** Width relative to ResNet-50's (a 64-filter stem, bottleneck widths 64, 128, 256, 512). Default 1. */
  width: number;
}

/** Stages: bottleneck blocks and width factor. */
const STAGES: readonly [number, number][] = [
  [3, 1],
  [4, 2],
  [6, 4],
  [3, 8],
];

/** Filters of the stem at a width (64 at width 1). */
export function resnetStem(width: number): number {
  return Math.max(1, Math.round(64 * width));
}

function plan(o: ResNet50Options, outputStride: number): (PlannedBlock & { mid: number })[] {
  // The first stage does not downsample: the stem's max-pooling did.
  const planned = stageBlocks(
    STAGES.map(([n], stage) => ({ blocks: n, stride: stage === 0 ? 1 : 2 })),
    outputStride,
    4,
  );
  return planned.map((block) => ({ ...block, mid: resnetStem(o.width) * STAGES[block.stage][1] }));
}

/**
 * ResNet-50 (He et al., CVPR 2016) without its classifier: a 7x7 stride-2 stem and 3x3 stride-2 max-pooling, then
 * bottleneck blocks [3, 4, 6, 3] (1x1 reduce, 3x3 carrying the stride, as in torchvision's v1.5, 1x1 expand to 4x,
 * projection shortcuts at each stage's first block), batch norm and ReLU throughout. Features: the stem (stride 2)
 * and each stage (4 to 32); at output stride 16 or 8 the later 3x3s are dilated instead (`AtrousConv2D`). Layers
 * `stem*` and `bottleneck_<n>_*`. At width 1 it has torchvision's `resnet50()` trainable weights without the
 * classifier, 23,508,032.
 */
export const resnet50: EncoderPlugin<ResNet50Options> = defineEncoder<ResNet50Options>({
  name: 'resnet50',
  description: 'ResNet-50 (He et al. 2016): bottleneck residual blocks [3, 4, 6, 3]',
  defaults: { width: 1 },
  optionsSchema: { width: { type: 'number', min: 0.01, max: 4, description: 'width relative to ResNet-50 (64)' } },
  outputStrides: [8, 16, 32],
  layerPattern: /^(stem|bottleneck_\d+)(_|$)/,
  layers: [AtrousConv2D],
  onnxConverters: { [AtrousConv2D.className]: atrousOnnxConverter },
  build({ input, options, outputStride, seeds }) {
    let x = convBnAct(input, { filters: resnetStem(options.width), kernelSize: 7, stride: 2, name: 'stem', seeds });
    const features: layers.SymbolicTensor[] = [x];
    x = applyLayer(layers.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same', name: 'stem_pool' }), x);
    plan(options, outputStride).forEach((block, i) => {
      const name = `bottleneck_${i + 1}`;
      let y = convBnAct(x, { filters: block.mid, kernelSize: 1, name: `${name}_reduce`, seeds });
      y = convBnAct(y, {
        filters: block.mid,
        kernelSize: 3,
        stride: block.stride,
        rate: block.rate,
        name: `${name}_conv3x3`,
        seeds,
      });
      y = convBnAct(y, { filters: 4 * block.mid, kernelSize: 1, activation: null, name: `${name}_expand`, seeds });
      const shortcut = block.first
        ? convBnAct(x, {
            filters: 4 * block.mid,
            kernelSize: 1,
            stride: block.stride,
            activation: null,
            name: `${name}_shortcut`,
            seeds,
          })
        : x;
      x = applyLayer(layers.layers.add({ name: `${name}_add` }), [shortcut, y]);
      x = applyLayer(layers.layers.reLU({ name: `${name}_out` }), x);
      if (block.last) features.push(x);
    });
    return features;
  },
  reach(options, outputStride) {
    let r = reachConv(reachConv(INPUT_REACH, 7, 2), 3, 2);
    const reaches: Reach[] = [reachConv(INPUT_REACH, 7, 2)];
    for (const block of plan(options, outputStride)) {
      // The 3x3 carries stride and rate; the shortcut (identity or strided 1x1) reaches less.
      r = reachUnion(reachConv(r, 3, block.stride, block.rate), reachConv(r, 1, block.stride));
      if (block.last) reaches.push(r);
    }
    return reaches;
  },
});
