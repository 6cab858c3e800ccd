/**
 * `@tessera/core`: the public interfaces of Tessera (architecture and trainer plugins, registry, engines,
 * model folders), its data pipeline, trainer and in-memory prediction. Importing it has no side effects:
 * engines are loaded by {@link setupEngine}.
 */
export * as tf from '@tensorflow/tfjs-core';
export * as layers from '@tensorflow/tfjs-layers';
export * from './errors.js';
export { CORE_VERSION } from './version.js';
export { escapeMarkup, Markup, markup, rawMarkup } from './markup.js';
export {
  ARCHITECTURE_API_VERSION,
  defineArchitecture,
  resolveArchitectureOptions,
  validatePlugin,
  type ArchitecturePlugin,
  type BuildSpec,
  type LayerClass,
  type OptionSpec,
} from './arch/architecture.js';
export {
  buildArchitecture,
  checkModelOutput,
  importPluginModules,
  registerPluginLayers,
  type OutputCheckShape,
} from './arch/plugin-layers.js';
export { ArchitectureRegistry, type PluginOrigin } from './arch/registry.js';
export { batchNormalization, type BatchNormalizationArgs } from './arch/batch-norm.js';
export { applyLayer, classHead, convBnAct, seedSequence, type ConvBlockOptions } from './arch/blocks.js';
export {
  INPUT_REACH,
  reachConv,
  reachTransposed,
  reachUnion,
  reachUpsample,
  receptiveFieldOfReach,
  type Reach,
} from './arch/reach.js';
export {
  AtrousConv2D,
  atrousOnnxConverter,
  defineEncoder,
  EncoderRegistry,
  encoders,
  featureStrides,
  mobilenetv2,
  resnet50,
  stageBlocks,
  vgg16,
  type AtrousConv2DArgs,
  type EncoderBuildSpec,
  type EncoderPlugin,
  type MobileNetV2Options,
  type PlannedBlock,
  type ResNet50Options,
  type Vgg16Options,
} from './arch/encoders/index.js';
export type {
  OnnxAttribute,
  OnnxConvOptions,
  OnnxGraph,
  OnnxLayer,
  OnnxLayerConverter,
  OnnxWeight,
} from './arch/onnx-converter.js';
export {
  ENGINE_NAMES,
  activeEngine,
  probeEngines,
  setupEngine,
  type EngineInfo,
  type EngineName,
  type EngineProbe,
} from './engine/engine.js';
export * from './data/index.js';
export * from './train/index.js';
export {
  defaultTrainer,
  evaluateSamples,
  resolveTrainOptions,
  TRAIN_DEFAULTS,
  TRAINER_API_VERSION,
  validateTrainerPlugin,
  type EpochRecord,
  type ResolvedTrainOptions,
  type TrainEvent,
  type TrainOptions,
  type TrainRequest,
  type TrainResult,
  type TrainerPlugin,
} from './train/trainer.js';
export { transferWeights, type TransferReport } from './train/transfer.js';
export {
  earlyStopping,
  runTrainingLoop,
  timeBudget,
  validationSchedule,
  type LoopContext,
  type LoopSpec,
  type StepRecord,
  type TrainingCallback,
} from './train/loop.js';
export {
  MODEL_FORMAT_VERSION,
  validateManifest,
  type InitProvenance,
  type ModelManifest,
  type QuantizationProvenance,
  type TrainingProvenance,
} from './model/manifest.js';
export {
  countParameters,
  checkOutputDir,
  loadModel,
  makeOutputDir,
  readManifest,
  saveModel,
  draftManifest,
  MODEL_FILES,
  type ManifestDraft,
  type ManifestFields,
} from './model/model-io.js';
export {
  padReflect,
  planImage,
  predictProbabilities,
  reflectIndex,
  type FloatImage,
  type PredictOptions,
} from './predict/predict.js';
export {
  checkTileOptions,
  DEFAULT_TILE,
  defaultOverlap,
  receptiveContext,
  resolveTiling,
  splitImage,
  type SplitOptions,
  type TileLocation,
  type TilePlan,
  type TilingOptions,
} from './predict/splitter.js';
export {
  accumulateTile,
  blendWeights,
  finishRow,
  ImageMerger,
  tileWeights,
  type Blend,
  type ImageMergerOptions,
  type RowAccumulator,
} from './predict/merger.js';
export { isPredictor, tfjsPredictor, type Predictor } from './predict/predictor.js';
export { renderOverlay } from './predict/overlay.js';
export { checkInputSize } from './arch/check-input.js';
export { countActivations, countFlops } from './arch/flops.js';
