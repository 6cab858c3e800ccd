/**
 * Training building blocks: segmentation losses, confusion-matrix metrics, learning-rate schedules, optimizers with a
 * settable learning rate, and training-curve charts.
 */
export {
  LOSS_DEFAULTS,
  LOSS_NAMES,
  ceDiceLoss,
  crossEntropyLoss,
  diceLoss,
  focalLoss,
  getLoss,
  resolveLossOptions,
  type LossFn,
  type LossName,
  type LossOptions,
  type ResolvedLossOptions,
} from './losses.js';
export {
  ConfusionMatrix,
  argmaxLabels,
  makeEvaluationReport,
  type ConfusionMatrixJSON,
  type EvaluationReport,
} from './metrics.js';
export {
  SCHEDULE_DEFAULTS,
  SCHEDULE_NAMES,
  makeSchedule,
  resolveScheduleOptions,
  type ResolvedScheduleOptions,
  type ScheduleName,
  type ScheduleOptions,
} from './schedules.js';
export {
  OPTIMIZER_DEFAULTS,
  OPTIMIZER_NAMES,
  createOptimizer,
  getLearningRate,
  setLearningRate,
  setOptimizerWeights,
  type OptimizerName,
  type OptimizerOptions,
} from './optimizers.js';
export {
  LINE_CHART_DEFAULTS,
  niceTicks,
  renderLineChartPng,
  renderLineChartSvg,
  type LineChartOptions,
  type Series,
} from './plot.js';
