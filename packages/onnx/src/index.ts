/**
 * `@tessera/onnx`: exports trained Tessera models to ONNX and runs them with onnxruntime-node, the fast path for
 * prediction on CPUs (and on NVIDIA GPUs with onnxruntime's CUDA provider).
 */
export {
  exportOnnx,
  ONNX_IO,
  ONNX_METADATA,
  ONNX_OPSET,
  UnsupportedLayerError,
  type ExportOnnxOptions,
} from './export.js';
export { BUILTIN_CONVERTERS } from './converters.js';
export {
  exportModelDir,
  INT8_ONNX_FILE,
  int8OnnxForModelDir,
  onnxForModelDir,
  ONNX_FILE,
  readOnnxMetadata,
} from './model-dir.js';
export {
  CALIBRATION_METHODS,
  calibrateRanges,
  DEFAULT_PERCENTILE,
  resolveCalibrationOptions,
  type CalibrationMethod,
  type CalibrationOptions,
  type InputTensor,
  type TensorRange,
} from './calibrate.js';
export { quantizeOnnx, type Fp32Node, type QuantizationReport, type QuantizeOptions } from './quantize.js';
export { compareLabels, type LabelAgreement } from './agreement.js';
export { QuantizationAccuracyError, QuantizeOptionError } from './errors.js';
export {
  createOnnxPredictor,
  cudaProviderInstalled,
  ONNX_DEVICES,
  ONNXRUNTIME_VERSION,
  type OnnxDevice,
  type OnnxPredictorOptions,
} from './runtime.js';
