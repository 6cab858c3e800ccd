/**
 * `@tessera/trainer-he-nuclei`: self-supervised pretraining for nuclei in H&E, as a trainer plugin
 * (`tessera pretrain --trainer he-nuclei`). On unlabelled images and slides, colour deconvolution and Otsu's threshold
 * find the haematoxylin-rich nuclei ({@link pseudoNuclei}); the network of any architecture learns to segment them,
 * with the classes `background` and `nucleus`. The result is an ordinary model folder: `tessera train --init` on
 * nucleus masks then loads every layer, the head included, and training corrects what the stain alone gets wrong.
 */
import { join } from 'node:path';
import {
  InvalidOptionError,
  RGB_FROM_HED,
  TRAINER_API_VERSION,
  writePng,
  type RasterImage,
  type TrainerPlugin,
} from '@tessera/core';
import { pretrainOnTiles, type PretrainingRecord } from '@tessera/trainer-ssl';
import { pseudoNuclei } from './stain.js';
export {
  gaussianBlur,
  haematoxylin,
  MIN_AREA_PX,
  MIN_AREA_UM2,
  nucleusMask,
  otsuThreshold,
  pseudoNuclei,
} from './stain.js';

/** Options of {@link heNucleiTrainer}. */
export interface HeNucleiOptions {
  /** Tiles sampled from each slide (and at most cut from each image). Default 64. */
  tilesPerSource?: number;
  /** Share of a slide tile's thumbnail pixels that must be tissue. Default 0.5. */
  minTissue?: number;
}

/** `pretraining.json` of a model folder pretrained on stain pseudo-labels. */
export interface HeNucleiRecord extends PretrainingRecord {
  stainVectors: number[][];
  /** Per source, in `sources` order: its Otsu threshold on the haematoxylin amount and the share found nucleus. */
  thresholds: { threshold: number; nucleusShare: number }[];
}

/** The classes the pretrained network predicts (those of a nucleus mask). */
export const HE_NUCLEI_CLASSES = {
  classes: [
    { name: 'background', value: 0, color: '#000000', background: true },
    { name: 'nucleus', value: 1, color: '#00ff80' },
  ],
};

/**
 * The H&E nuclei pseudo-label trainer. Also writes `pseudo-labels.png` in the model folder: up to 8 tiles with the
 * nuclei the stain found in green, to check before trusting the start.
 * @example
 * ```ts
 * await heNucleiTrainer().train({ architecture: unet(), images: 'slides/', out: 'pretrained', options: { timeBudgetMinutes: 15 } });
 * ```
 */
export default function heNucleiTrainer(options: HeNucleiOptions = {}): TrainerPlugin {
  const perSource = options.tilesPerSource ?? 64;
  const minTissue = options.minTissue ?? 0.5;
  return {
    name: 'he-nuclei',
    apiVersion: TRAINER_API_VERSION,
    description:
      'self-supervised for H&E: segments the nuclei that colour deconvolution finds on unlabelled images and slides ' +
      '(a starting point for --init on nucleus masks)',
    learnsFrom: 'images',
    async train(request) {
      let preview: RasterImage | undefined;
      const channels = (count: 1 | 3, path: string) => {
        if (count === 1) {
          throw new InvalidOptionError(
            `Expected colour H&E images for the he-nuclei trainer but "${path}" has 1 channel (grey).`,
            'Use --trainer inpainting for grey images (EM, fluorescence), or give RGB H&E images.',
          );
        }
      };
      const result = await pretrainOnTiles(
        request,
        { perSource, minTissue, channels },
        ({ tiles, source, sources }) => {
          const targets: Uint8Array[] = new Array<Uint8Array>(tiles.length);
          const thresholds = sources.map((s, i) => {
            const at = source.flatMap((from, t) => (from === i ? [t] : []));
            const { masks, threshold, share } = pseudoNuclei(
              at.map((t) => tiles[t]),
              s.mpp,
            );
            at.forEach((t, j) => (targets[t] = masks[j]));
            return { threshold, nucleusShare: share };
          });
          preview = montage(tiles.slice(0, 8), targets.slice(0, 8));
          const pixels = targets.reduce((s, m) => s + m.length, 0);
          const share = targets.reduce((s, m) => s + m.reduce((t, v) => t + v, 0), 0) / pixels;
          const record = {
            method:
              'segmentation of H&E stain pseudo-labels: colour deconvolution (Ruifrok & Johnston), Otsu threshold ' +
              'per source on the haematoxylin amount, holes filled, specks under 2 µm² dropped',
            stainVectors: RGB_FROM_HED.map((v) => [...v]),
            thresholds,
          };
          return {
            classes: HE_NUCLEI_CLASSES,
            targets,
            notice:
              `segmenting the nuclei that colour deconvolution and Otsu's threshold find ` +
              `(${(share * 100).toFixed(1)}% of the pixels; shown in pseudo-labels.png)`,
            record,
          };
        },
      );
      if (preview) await writePng(join(result.out, 'pseudo-labels.png'), preview);
      return result;
    },
  };
}

/** Tiles side by side in rows of 4, their pseudo-nuclei tinted green. */
function montage(tiles: readonly RasterImage[], masks: readonly Uint8Array[]): RasterImage {
  const [w, h] = [tiles[0].width, tiles[0].height];
  const columns = Math.min(4, tiles.length);
  const rows = Math.ceil(tiles.length / columns);
  const data = new Uint8Array(columns * w * rows * h * 3).fill(255);
  const width = columns * w;
  tiles.forEach((tile, i) => {
    const [ox, oy] = [(i % columns) * w, Math.floor(i / columns) * h];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const p = y * w + x;
        const at = ((oy + y) * width + ox + x) * 3;
        for (let c = 0; c < 3; c++) {
          const v = tile.data[p * tile.channels + c];
          data[at + c] = masks[i][p] ? Math.round(0.5 * v + 0.5 * [0, 255, 128][c]) : v;
        }
      }
    }
  });
  return { data, width, height: rows * h, channels: 3 };
}
