/**
 * Errors raised by the int8 quantization of `@tessera/onnx`. Each subclasses one of `@tessera/core`'s error classes,
 * so the CLI maps it to an exit code, and carries a stable `code`. Messages name the option or figure, what was
 * expected and what came; hints say what to do.
 */
import { InvalidOptionError, TesseraError } from '@tessera/core';

function setCode(error: Error, code: string): void {
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
}

/**
 * An option of the quantizer is out of range (calibration method, percentile, no calibration tiles). Exit code 2,
 * code `E_QUANTIZE_OPTION`.
 */
export class QuantizeOptionError extends InvalidOptionError {
  constructor(message: string, hint?: string, option?: string | readonly string[]) {
    super(message, hint, option);
    setCode(this, 'E_QUANTIZE_OPTION');
  }
}

/**
 * The int8 model's labels agree with the fp32 model's less often than asked for (exit code 12, code
 * `E_QUANTIZATION_ACCURACY`): the int8 model was not written.
 */
export class QuantizationAccuracyError extends TesseraError {
  constructor(message: string, hint?: string) {
    super('E_QUANTIZATION_ACCURACY', message, { exitCode: 12, hint });
  }
}
