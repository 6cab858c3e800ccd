import * as layers from '@tensorflow/tfjs-layers';
import { applyLayer, convBnAct } from '../blocks.js';
import { INPUT_REACH, reachConv, type Reach } from '../reach.js';
import { AtrousConv2D, atrousOnnxConverter } from './atrous.js';
import { defineEncoder, stageBlocks, type EncoderPlugin, type PlannedBlock } from './encoder.js';

/** Options of the MobileNetV2 encoder. */
export interface MobileNetV2Options {
  /** Width multiplier (1 in the paper). Default 1. */
  width: number;
}

/** Inverted-residual stages: expansion t, output channels c, blocks n, first stride s. */
const STAGES: readonly [number, number, number, number][] = [
  [1, 16, 1, 1],
  [6, 24, 2, 2],
  [6, 32, 3, 2],
  [6, 64, 4, 2],
  [6, 96, 3, 1],
  [6, 160, 3, 2],
  [6, 320, 1, 1],
];

/** Stages after which a feature map is taken: strides 2, 4, 8, 16 and 32. */
const FEATURE_STAGES = [0, 1, 2, 4, 6];

/** Channels rounded to a multiple of 8, never more than 10% down (MobileNetV2's `_make_divisible`). */
function divisible(v: number): number {
  const r = Math.max(8, Math.floor((v + 4) / 8) * 8);
  return r < 0.9 * v ? r + 8 : r;
}

type Block = PlannedBlock & { expand: number; out: number; feature: boolean };

function plan(o: MobileNetV2Options, outputStride: number): Block[] {
  const planned = stageBlocks(
    STAGES.map(([, , n, s]) => ({ blocks: n, stride: s })),
    outputStride,
    2,
  );
  return planned.map((block) => {
    const [t, c] = STAGES[block.stage];
    return {
      ...block,
      expand: t,
      out: divisible(c * o.width),
      feature: block.last && FEATURE_STAGES.includes(block.stage),
    };
  });
}

/**
 * MobileNetV2 (Sandler et al., CVPR 2018) without its final 1280-channel layer: a 3x3 stride-2 stem, then inverted
 * residual blocks (1x1 expansion, depthwise 3x3, linear 1x1 projection, ReLU6, a residual connection when the shape
 * allows). Features after the stages of 16, 24, 32, 96 and 320 channels (strides 2 to 32); at output stride 16 or 8
 * the later depthwise convolutions are dilated instead (`AtrousConv2D`). Layers `stem*` and `block_<n>_*`. At width 1
 * it has torchvision's `mobilenet_v2().features[:-1]` trainable weights, 1,811,712.
 */
export const mobilenetv2: EncoderPlugin<MobileNetV2Options> = defineEncoder<MobileNetV2Options>({
  name: 'mobilenetv2',
  description: 'MobileNetV2 (Sandler et al. 2018): inverted residual blocks with depthwise convolutions',
  defaults: { width: 1 },
  optionsSchema: { width: { type: 'number', min: 0.1, max: 2, description: 'width multiplier (paper 1)' } },
  outputStrides: [8, 16, 32],
  layerPattern: /^(stem|block_\d+)(_|$)/,
  layers: [AtrousConv2D],
  onnxConverters: { [AtrousConv2D.className]: atrousOnnxConverter },
  build({ input, options, outputStride, seeds }) {
    let x = convBnAct(input, {
      filters: divisible(32 * options.width),
      kernelSize: 3,
      stride: 2,
      activation: 'relu6',
      name: 'stem',
      seeds,
    });
    const features: layers.SymbolicTensor[] = [];
    plan(options, outputStride).forEach((block, i) => {
      const cin = x.shape[3] as number;
      const name = `block_${i + 1}`;
      let y = x;
      if (block.expand !== 1) {
        y = convBnAct(y, {
          filters: cin * block.expand,
          kernelSize: 1,
          activation: 'relu6',
          name: `${name}_expand`,
          seeds,
        });
      }
      y = convBnAct(y, {
        filters: 0,
        kernelSize: 3,
        stride: block.stride,
        rate: block.rate,
        depthwise: true,
        activation: 'relu6',
        name: `${name}_depthwise`,
        seeds,
      });
      y = convBnAct(y, { filters: block.out, kernelSize: 1, activation: null, name: `${name}_project`, seeds });
      x = block.stride === 1 && cin === block.out ? applyLayer(layers.layers.add({ name: `${name}_add` }), [x, y]) : y;
      if (block.feature) features.push(x);
    });
    return features;
  },
  reach(options, outputStride) {
    let r: Reach = reachConv(INPUT_REACH, 3, 2);
    const reaches: Reach[] = [];
    for (const block of plan(options, outputStride)) {
      r = reachConv(r, 3, block.stride, block.rate); // the 1x1s add nothing
      if (block.feature) reaches.push(r);
    }
    return reaches;
  },
});
