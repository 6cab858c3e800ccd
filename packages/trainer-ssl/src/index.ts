/**
 * `@tessera/trainer-ssl`: self-supervised pretraining for Tessera, as a trainer plugin (`tessera pretrain`, or
 * `tessera train --trainer inpainting`). The network of any architecture learns to inpaint blanked rectangles of
 * unlabelled tiles, predicting each hidden pixel's colour among a palette fitted to the tiles (cross-entropy over
 * palette colours, as image GPT does, so the architecture's own softmax head serves). The result is an ordinary model
 * folder; `tessera train --init` starts from it, re-initialising only the head for the real classes.
 */
import { InvalidOptionError, TRAINER_API_VERSION, type ClassMap, type TrainerPlugin } from '@tessera/core';
import { MASKED_SHARE, maskRegions } from './mask.js';
import { fitPalette, quantize } from './palette.js';
import { pretrainOnTiles, type PretrainingRecord } from './pretrain.js';
export { fitPalette, quantize } from './palette.js';
export { maskRegions, MASKED_SHARE } from './mask.js';
export { listSources, sampleTiles, SOURCE_EXTENSIONS, type SourceTiles } from './sample.js';
export {
  pretrainOnTiles,
  type PretextTask,
  type PretrainingRecord,
  type PretrainingTiles,
  type SamplingOptions,
} from './pretrain.js';

/** Options of {@link inpaintingTrainer}. */
export interface InpaintingOptions {
  /** Colours of the palette the network predicts. Default 16. */
  palette?: number;
  /** Tiles sampled from each slide (and at most cut from each image). Default 64. */
  tilesPerSource?: number;
  /** Share of a slide tile's thumbnail pixels that must be tissue. Default 0.5. */
  minTissue?: number;
}

/** `pretraining.json` of an inpainting-pretrained model folder. */
export interface InpaintingRecord extends PretrainingRecord {
  palette: number[][];
  maskedShare: readonly [number, number];
}

/**
 * The masked-region inpainting trainer.
 * @example
 * ```ts
 * await inpaintingTrainer().train({ architecture: unet(), images: 'slides/', out: 'pretrained', options: { timeBudgetMinutes: 30 } });
 * ```
 */
export default function inpaintingTrainer(options: InpaintingOptions = {}): TrainerPlugin {
  const k = options.palette ?? 16;
  const perSource = options.tilesPerSource ?? 64;
  const minTissue = options.minTissue ?? 0.5;
  if (!Number.isInteger(k) || k < 2 || k > 64) {
    throw new InvalidOptionError(`Expected an integer palette size between 2 and 64 but received ${String(k)}.`);
  }
  return {
    name: 'inpainting',
    apiVersion: TRAINER_API_VERSION,
    description:
      'self-supervised: inpaints blanked regions of unlabelled images and slides (a starting point for --init)',
    learnsFrom: 'images',
    train: (request) =>
      pretrainOnTiles(request, { perSource, minTissue }, ({ tiles, tileSize, random }) => {
        const palette = fitPalette(tiles, k, random.fork('palette'));
        const classes: ClassMap = {
          classes: palette.map((colour, value) => ({
            name: `colour-${value}`,
            value,
            color: `#${(colour.length === 1 ? [colour[0], colour[0], colour[0]] : colour).map((v) => v.toString(16).padStart(2, '0')).join('')}`,
            background: false,
          })),
        };
        return {
          classes,
          targets: tiles.map((tile) => quantize(tile, palette)),
          notice: `inpainting ${MASKED_SHARE.map((v) => `${v * 100}%`).join('-')} of each crop in a palette of ${k} colours`,
          transformBatch: (image, labels, stepRandom) => maskRegions(image, labels, stepRandom, tileSize),
          options: { loss: 'cross-entropy' },
          record: {
            method: 'masked-region inpainting, cross-entropy over a colour palette of the tiles',
            palette,
            maskedShare: MASKED_SHARE,
          },
        };
      }),
  };
}
