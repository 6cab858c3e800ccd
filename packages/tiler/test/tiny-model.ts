/** Test fixture: a tiny untrained U-Net (depth 2, 4 base filters) saved as a model folder. */
import unet from '@tessera/arch-unet';
import { resolveArchitectureOptions, saveModel, setupEngine, type ModelManifest } from '@tessera/core';

export async function saveTinyUnet(dir: string, mpp: number | null = null): Promise<ModelManifest> {
  await setupEngine('cpu');
  const plugin = unet();
  const options = resolveArchitectureOptions(plugin, { depth: 2, baseFilters: 4 });
  const model = plugin.build({ inputChannels: 3, numClasses: 3, tileSize: 64, seed: 5, options });
  return saveModel(dir, model, {
    format: 'tessera-model',
    formatVersion: 1,
    architecture: {
      name: 'unet',
      version: plugin.version,
      apiVersion: plugin.apiVersion,
      options: options as unknown as Record<string, unknown>,
      inputMultiple: plugin.inputMultiple(options),
      receptiveField: plugin.receptiveField(options),
      parameters: model.countParams(),
    },
    classes: [
      { name: 'background', value: 0, color: '#000000' },
      { name: 'nucleus', value: 1, color: '#ff0000' },
      { name: 'stroma', value: 2, color: '#00ff00' },
    ],
    inputChannels: 3,
    normalization: { mean: [0.7, 0.5, 0.7], std: [0.15, 0.2, 0.15] },
    tileSize: 64,
    mpp,
    createdBy: 'tiler test',
  });
}
