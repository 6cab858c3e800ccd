/**
 * The model the fuzzer predicts with: the tests' tiny untrained U-Net (depth 2, 4 base filters, tile 64) with two
 * classes. Prediction then costs little, so the fuzzer's time goes to reading slides.
 */
import { saveTinyUnet } from '../tiny-model.mjs';

/** Saves the fuzzer's model into `dir` (created) and returns `dir`. */
export async function saveFuzzModel(dir) {
  await saveTinyUnet(dir, {
    classes: [
      { name: 'background', value: 0, color: '#000000' },
      { name: 'tissue', value: 1, color: '#ff0000' },
    ],
    seed: 7,
    createdBy: 'tessera fuzzer',
  });
  return dir;
}
