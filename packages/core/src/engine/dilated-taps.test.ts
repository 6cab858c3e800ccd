import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// The tfjs-layers bundle registers tfjs-core's gradient functions (tf.grad needs them).
import '@tensorflow/tfjs-layers';
import { planTaps, tapConv2D } from './dilated-taps.js';
import type { ConvGeometry } from './simd.js';
import { expectNoGrowth, randomTensor, relativeError, runOn, useTesseraWasm } from './test-helpers.js';

type Shape4 = [number, number, number, number];
type Pad = 'same' | 'valid' | tf.backend_util.ExplicitPadding;

const tensor = randomTensor;

/** `conv(x, W)` and the gradients of `sum(conv * r)` with respect to x and W. */
function convAndGrads(xs: Shape4, ws: Shape4, rate: number, pad: Pad): tf.Tensor[] {
  const x = tensor(xs, 1) as tf.Tensor4D;
  const w = tensor(ws, 2) as tf.Tensor4D;
  const f = (a: tf.Tensor4D, b: tf.Tensor4D) => tf.conv2d(a, b, 1, pad as 'same', 'NHWC', rate);
  const y = f(x, w);
  const r = tensor(y.shape, 3);
  const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a as tf.Tensor4D, b as tf.Tensor4D), r)))([
    x,
    w,
  ]);
  return [y, dx, dw];
}

/** The geometry `planTaps` sees for a 'same' stride-1 convolution. */
function sameGeometry([n, h, w, c]: Shape4, [kh, kw, , co]: Shape4, rate: number): ConvGeometry {
  const eh = (kh - 1) * rate + 1;
  const ew = (kw - 1) * rate + 1;
  return {
    n,
    h,
    w,
    c,
    oh: h,
    ow: w,
    co,
    kh,
    kw,
    sh: 1,
    sw: 1,
    dh: rate,
    dw: rate,
    pt: (eh - 1) >> 1,
    pl: (ew - 1) >> 1,
  };
}

beforeAll(useTesseraWasm);

describe('dilated convolutions tap by tap (wasm)', () => {
  it('plans only the taps that reach the image, and only where few multiply-adds are useful', () => {
    // ASPP at 16 x 16: rate 18 keeps the centre tap, rate 12 all nine (on 4-pixel borders), rate 6 all nine.
    expect(planTaps(sameGeometry([2, 16, 16, 8], [3, 3, 8, 8], 18))!.map((t) => t.index)).toEqual([4]);
    expect(planTaps(sameGeometry([2, 16, 16, 8], [3, 3, 8, 8], 12))).toHaveLength(9);
    expect(planTaps(sameGeometry([2, 16, 16, 8], [3, 3, 8, 8], 6))).toHaveLength(9);
    // Rate 2 at 16 x 16 is mostly useful (0.77): the dense kernel runs.
    expect(planTaps(sameGeometry([2, 16, 16, 8], [3, 3, 8, 8], 2))).toBeNull();
    // Undilated convolutions are left to the other paths.
    expect(planTaps(sameGeometry([2, 4, 4, 8], [7, 7, 8, 8], 1))).toBeNull();
  });

  const cases: { name: string; x: Shape4; w: Shape4; rate: number; pad: Pad }[] = [
    { name: 'ASPP rate 6, same', x: [2, 16, 16, 12], w: [3, 3, 12, 8], rate: 6, pad: 'same' },
    { name: 'ASPP rate 12, same', x: [2, 16, 16, 12], w: [3, 3, 12, 8], rate: 12, pad: 'same' },
    { name: 'ASPP rate 18, same (centre tap only)', x: [2, 16, 16, 12], w: [3, 3, 12, 8], rate: 18, pad: 'same' },
    { name: 'odd sizes, rate 5, same', x: [1, 9, 13, 5], w: [3, 3, 5, 7], rate: 5, pad: 'same' },
    {
      name: 'uneven explicit padding, rate 4',
      x: [2, 7, 6, 3],
      w: [3, 2, 3, 4],
      rate: 4,
      pad: [
        [0, 0],
        [5, 2],
        [1, 4],
        [0, 0],
      ] as never,
    },
  ];
  for (const c of cases) {
    it(`${c.name}: output, input and filter gradients as cpu within 1e-5`, async () => {
      const reference = await runOn('cpu', () => convAndGrads(c.x, c.w, c.rate, c.pad));
      const actual = await runOn('wasm', () => convAndGrads(c.x, c.w, c.rate, c.pad));
      expect(actual.shapes).toEqual(reference.shapes);
      reference.values.forEach((v, i) => expect(relativeError(v, actual.values[i]), `output ${i}`).toBeLessThan(1e-5));
    });
  }

  it('the registered Conv2D runs tap by tap (its bits are those of tapConv2D), without leaks', async () => {
    await tf.setBackend('wasm');
    const x = tensor([2, 16, 16, 12], 5) as tf.Tensor4D;
    const w = tensor([3, 3, 12, 8], 6) as tf.Tensor4D;
    const registered = tf.conv2d(x, w, 1, 'same', 'NHWC', 12);
    const be = tf.backend() as unknown as Parameters<typeof tapConv2D>[0];
    const info = tapConv2D(be, x, w, sameGeometry(x.shape, w.shape, 12))!;
    const direct = tf.engine().makeTensorFromTensorInfo(info);
    expect(Array.from(registered.dataSync())).toEqual(Array.from(direct.dataSync()));
    tf.dispose([registered, direct]);
    expectNoGrowth(() => tf.tidy(() => void convAndGrads([2, 16, 16, 12], [3, 3, 12, 8], 12, 'same')));
    tf.dispose([x, w]);
  });
});
