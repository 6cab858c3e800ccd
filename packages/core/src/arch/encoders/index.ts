export { AtrousConv2D, atrousOnnxConverter, type AtrousConv2DArgs } from './atrous.js';
export {
  defineEncoder,
  EncoderRegistry,
  featureStrides,
  stageBlocks,
  type EncoderBuildSpec,
  type EncoderPlugin,
  type PlannedBlock,
} from './encoder.js';
export { mobilenetv2, type MobileNetV2Options } from './mobilenetv2.js';
export { resnet50, type ResNet50Options } from './resnet50.js';
export { vgg16, type Vgg16Options } from './vgg16.js';

import { EncoderRegistry } from './encoder.js';
import { mobilenetv2 } from './mobilenetv2.js';
import { resnet50 } from './resnet50.js';
import { vgg16 } from './vgg16.js';

/**
 * The encoders every architecture can use: VGG-16, MobileNetV2 and ResNet-50, and those that installed architecture
 * plugins declare in their `encoders` (registered with the plugin).
 */
export const encoders = new EncoderRegistry()
  .register(vgg16, 'core')
  .register(mobilenetv2, 'core')
  .register(resnet50, 'core');
