/**
 * The model the fuzzer predicts with: an untrained U-Net (depth 2, 4 base filters, 3 input channels, 2 classes,
 * tile 64), saved as a model folder. Prediction then costs little, so the fuzzer's time goes to reading slides.
 */
import unet from '@tessera/arch-unet';
import { resolveArchitectureOptions, saveModel, setupEngine } from '@tessera/core';

/** Saves the tiny model into `dir` (created) and returns `dir`. */
export async function saveFuzzModel(dir) {
  await setupEngine('cpu');
  const plugin = unet();
  const options = resolveArchitectureOptions(plugin, { depth: 2, baseFilters: 4 });
  const model = plugin.build({ inputChannels: 3, numClasses: 2, tileSize: 64, seed: 7, options });
  await saveModel(dir, model, {
    format: 'tessera-model',
    formatVersion: 1,
    architecture: {
      name: 'unet',
      version: plugin.version,
      apiVersion: plugin.apiVersion,
      options,
      inputMultiple: plugin.inputMultiple(options),
      receptiveField: plugin.receptiveField(options),
      parameters: model.countParams(),
    },
    classes: [
      { name: 'background', value: 0, color: '#000000' },
      { name: 'tissue', value: 1, color: '#ff0000' },
    ],
    inputChannels: 3,
    normalization: { mean: [0.7, 0.5, 0.7], std: [0.15, 0.2, 0.15] },
    tileSize: 64,
    mpp: null,
    createdBy: 'tessera fuzzer',
  });
  return dir;
}
