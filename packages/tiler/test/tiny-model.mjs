/**
 * The fixture model of the tests and benchmarks that predict: an untrained U-Net saved as a model folder. Its weights
 * are seeded, so its predictions are the same on every run; it is small, so the time goes to what is measured.
 */
import unet from '@tessera/arch-unet';
import { draftManifest, resolveArchitectureOptions, saveModel, setupEngine } from '@tessera/core';

/** Background and one class of mask value 255 (the shared nucleus masks). */
export const NUCLEUS_CLASSES = [
  { name: 'background', value: 0, color: '#000000' },
  { name: 'nucleus', value: 255, color: '#ff0000' },
];

/** Background, nucleus and stroma, mask values 0, 1 and 2. */
export const THREE_CLASSES = [
  { name: 'background', value: 0, color: '#000000' },
  { name: 'nucleus', value: 1, color: '#ff0000' },
  { name: 'stroma', value: 2, color: '#00ff00' },
];

/**
 * Builds the U-Net on the cpu engine and saves it into `dir` (created).
 * @param {string} dir
 * @param {{ depth?: number, baseFilters?: number, classes?: object[], tileSize?: number, seed?: number,
 *   mpp?: number | null, createdBy?: string }} [options]
 * @returns {Promise<import('@tessera/core').ModelManifest>} the saved manifest.
 */
export async function saveTinyUnet(dir, options = {}) {
  const {
    depth = 2,
    baseFilters = 4,
    classes = THREE_CLASSES,
    tileSize = 64,
    seed = 5,
    mpp = null,
    createdBy = 'tessera test',
  } = options;
  await setupEngine('cpu');
  const plugin = unet();
  const resolved = resolveArchitectureOptions(plugin, { depth, baseFilters });
  const model = plugin.build({ inputChannels: 3, numClasses: classes.length, tileSize, seed, options: resolved });
  try {
    return await saveModel(
      dir,
      model,
      draftManifest(plugin, resolved, model, {
        classes,
        inputChannels: 3,
        normalization: { mean: [0.7, 0.5, 0.7], std: [0.15, 0.2, 0.15] },
        tileSize,
        mpp,
        createdBy,
      }),
    );
  } finally {
    model.dispose();
  }
}
