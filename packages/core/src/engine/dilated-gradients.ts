/**
 * Gradients of dilated (atrous) convolutions.
 *
 * tfjs-core's gradient functions of `Conv2D` and `DepthwiseConv2dNative` throw for dilation rates above 1 on every
 * backend. The gradients registered here compute the dilated case through the space-to-batch identity
 *
 *   `conv(x, W, rate r) = batchToSpace(conv(spaceToBatch(pad(x), r), W, rate 1), r)`
 *
 * so only rate-1 backprop kernels are needed (`Conv2DBackpropFilter`/`Input`, `DepthwiseConv2dNativeBackpropFilter`/
 * `Input`) plus `SpaceToBatchND`, `BatchToSpaceND`, `Pad` and `Slice`, which every backend has. On the wasm engine
 * with Tessera's gradient kernels (`wasm-gradients.ts`), which take a `dilations` attribute, the dilated backprop
 * kernels are called directly instead (same values, no `rate^2` phase images). Rate 1 keeps tfjs's own gradients.
 *
 * What runs where: the unfused ops `tf.conv2d`, `tf.depthwiseConv2d` and `tf.separableConv2d` record the kernels
 * `Conv2D` / `DepthwiseConv2dNative`, whose registered gradients these are. The tfjs-layers `Conv2D` layer instead
 * calls `tf.fused.conv2d`, whose gradient is a `customGrad` closure recorded under the op scope `fusedConv2d__op`
 * without the convolution's attributes; it cannot be overridden by `registerGradient` and still rejects dilations.
 * Layers that must train with dilation therefore call the unfused ops (see `@tessera/arch-deeplab`'s atrous layer).
 * The tfjs-layers `DepthwiseConv2D` layer ignores its `dilationRate` altogether (tfjs-layers 4.22).
 */
import * as tf from '@tensorflow/tfjs-core';

type Pad = 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;

interface ConvAttrs {
  strides: [number, number] | number;
  dilations?: [number, number] | number;
  pad: Pad;
  dataFormat?: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

function pair(v: [number, number] | number | undefined): [number, number] {
  if (v === undefined || v === null) return [1, 1];
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

/**
 * Gradients of a stride-1 convolution with dilation `[rh, rw]` via space-to-batch: the padded input is split into
 * `rh * rw` phase images, on which the dilated convolution is an ordinary ('valid', rate 1) one.
 */
function dilatedGradients(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  dy: tf.Tensor4D,
  attrs: ConvAttrs,
  depthwise: boolean,
): { x: () => tf.Tensor; filter: () => tf.Tensor } {
  const kernel = depthwise ? 'DepthwiseConv2dNative' : 'Conv2D';
  const [rh, rw] = pair(attrs.dilations);
  const [sh, sw] = pair(attrs.strides);
  if (sh !== 1 || sw !== 1) {
    throw new Error(`Error in gradient of ${kernel}: dilations ${rh}x${rw} need strides 1, got ${sh}x${sw}.`);
  }
  if (attrs.dataFormat !== undefined && attrs.dataFormat !== 'NHWC') {
    throw new Error(`Error in gradient of ${kernel}: dataFormat ${attrs.dataFormat} is not supported; use NHWC.`);
  }
  const info = tf.backend_util.computeConv2DInfo(
    x.shape,
    filter.shape,
    1,
    [rh, rw],
    attrs.pad,
    attrs.dimRoundingMode,
    depthwise,
  );
  const [n, h, w, ci] = x.shape;
  const [kh, kw] = filter.shape;
  const { top, left } = info.padInfo;
  const oh = info.outHeight;
  const ow = info.outWidth;
  // Rows/columns of the padded input that the outputs read, rounded up to whole phases.
  const hp = Math.ceil((oh + (kh - 1) * rh) / rh) * rh;
  const wp = Math.ceil((ow + (kw - 1) * rw) / rw) * rw;
  // Phase-image output size: (hp / rh - kh + 1) rows per phase, of which the first `oh` (interleaved) are real.
  const ph = hp / rh - kh + 1;
  const pw = wp / rw - kw + 1;
  const phases = (): tf.Tensor4D => {
    let xp = tf.pad(x, [
      [0, 0],
      [top, Math.max(0, hp - h - top)],
      [left, Math.max(0, wp - w - left)],
      [0, 0],
    ]);
    if (xp.shape[1] > hp || xp.shape[2] > wp) xp = tf.slice(xp, [0, 0, 0, 0], [n, hp, wp, ci]);
    return tf.spaceToBatchND(
      xp,
      [rh, rw],
      [
        [0, 0],
        [0, 0],
      ],
    ) as tf.Tensor4D;
  };
  const dyPhases = (): tf.Tensor4D =>
    tf.spaceToBatchND(
      dy,
      [rh, rw],
      [
        [0, ph * rh - oh],
        [0, pw * rw - ow],
      ],
    ) as tf.Tensor4D;
  const engine = tf.engine();
  return {
    x: () => {
      const dys = dyPhases();
      const xsShape: [number, number, number, number] = [n * rh * rw, hp / rh, wp / rw, ci];
      const dxs = depthwise
        ? (engine.runKernel('DepthwiseConv2dNativeBackpropInput', { dy: dys, filter }, {
            strides: [1, 1],
            dilations: [1, 1],
            pad: 'valid',
            inputShape: xsShape,
          } as unknown as tf.NamedAttrMap) as tf.Tensor4D)
        : (engine.runKernel('Conv2DBackpropInput', { dy: dys, filter }, {
            strides: [1, 1],
            pad: 'valid',
            dataFormat: 'NHWC',
            inputShape: xsShape,
          } as unknown as tf.NamedAttrMap) as tf.Tensor4D);
      const dxp = tf.batchToSpaceND(
        dxs,
        [rh, rw],
        [
          [0, 0],
          [0, 0],
        ],
      ) as tf.Tensor4D;
      // Rows of x beyond the phases (never read by an output) get zero gradient.
      const hv = Math.min(h, hp - top);
      const wv = Math.min(w, wp - left);
      let dx = tf.slice(dxp, [0, top, left, 0], [n, hv, wv, ci]);
      if (hv < h || wv < w)
        dx = tf.pad(dx, [
          [0, 0],
          [0, h - hv],
          [0, w - wv],
          [0, 0],
        ]);
      return dx;
    },
    filter: () => {
      const xs = phases();
      const dys = dyPhases();
      return depthwise
        ? (engine.runKernel('DepthwiseConv2dNativeBackpropFilter', { x: xs, dy: dys }, {
            strides: [1, 1],
            dilations: [1, 1],
            pad: 'valid',
            filterShape: filter.shape,
          } as unknown as tf.NamedAttrMap) as tf.Tensor)
        : (engine.runKernel('Conv2DBackpropFilter', { x: xs, dy: dys }, {
            strides: [1, 1],
            pad: 'valid',
            dataFormat: 'NHWC',
            filterShape: filter.shape,
          } as unknown as tf.NamedAttrMap) as tf.Tensor);
    },
  };
}

/**
 * True when Tessera's wasm gradient kernels are installed on the active wasm backend: they take a `dilations`
 * attribute on all four backprop kernels, so dilated gradients need no space-to-batch detour (which costs
 * `rate^2` phase images, a lot for ASPP rates of 12 to 36 on small feature maps).
 */
function nativeDilatedBackprop(): boolean {
  return tf.getBackend() === 'wasm' && tf.getKernel('Conv2DBackpropFilter', 'wasm') != null;
}

function nativeGradients(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  dy: tf.Tensor4D,
  attrs: ConvAttrs,
  depthwise: boolean,
): { x: () => tf.Tensor; filter: () => tf.Tensor } {
  const engine = tf.engine();
  const common = {
    strides: attrs.strides,
    pad: attrs.pad,
    dilations: attrs.dilations,
    dimRoundingMode: attrs.dimRoundingMode,
    dataFormat: 'NHWC',
  };
  const run = (name: string, inputs: tf.NamedTensorMap, extra: object) =>
    engine.runKernel(name, inputs, { ...common, ...extra } as unknown as tf.NamedAttrMap) as tf.Tensor;
  return depthwise
    ? {
        x: () => run('DepthwiseConv2dNativeBackpropInput', { dy, filter }, { inputShape: x.shape }),
        filter: () => run('DepthwiseConv2dNativeBackpropFilter', { x, dy }, { filterShape: filter.shape }),
      }
    : {
        x: () => run('Conv2DBackpropInput', { dy, filter }, { inputShape: x.shape }),
        filter: () => run('Conv2DBackpropFilter', { x, dy }, { filterShape: filter.shape }),
      };
}

function withDilation(kernelName: 'Conv2D' | 'DepthwiseConv2dNative', original: tf.GradConfig): tf.GradConfig {
  const depthwise = kernelName === 'DepthwiseConv2dNative';
  return {
    kernelName,
    inputsToSave: ['x', 'filter'],
    gradFunc: (dy, saved, attrs) => {
      const a = attrs as unknown as ConvAttrs;
      const [rh, rw] = pair(a.dilations);
      if (rh === 1 && rw === 1) return original.gradFunc(dy, saved, attrs);
      const [x, filter] = saved as [tf.Tensor4D, tf.Tensor4D];
      if (nativeDilatedBackprop()) return nativeGradients(x, filter, dy as tf.Tensor4D, a, depthwise);
      return dilatedGradients(x, filter, dy as tf.Tensor4D, a, depthwise);
    },
  };
}

const overridden = new Set<tf.GradConfig>();

/**
 * Makes dilated convolutions trainable on every engine: replaces the gradients of `Conv2D` and
 * `DepthwiseConv2dNative` with ones that handle dilation rates above 1 (space-to-batch identity, see the module
 * notes) and delegate to tfjs's own gradients for rate 1. Called by {@link setupEngine}. Idempotent.
 *
 * Dilated convolutions must go through the unfused ops (`tf.conv2d`, `tf.depthwiseConv2d`, `tf.separableConv2d`);
 * the tfjs-layers `Conv2D` layer's fused path keeps rejecting dilated gradients.
 *
 * @example
 * ```ts
 * registerDilatedGradients();
 * const g = tf.grad((f: tf.Tensor4D) => tf.sum(tf.conv2d(x, f, 1, 'same', 'NHWC', 2)))(filter);
 * ```
 */
export function registerDilatedGradients(): void {
  for (const kernelName of ['Conv2D', 'DepthwiseConv2dNative'] as const) {
    const current = tf.getGradient(kernelName);
    if (current == null) throw new Error(`registerDilatedGradients: tfjs has no gradient for ${kernelName}.`);
    if (overridden.has(current)) continue;
    const config = withDilation(kernelName, current);
    overridden.add(config);
    tf.registerGradient(config);
  }
}
