/**
 * `@tessera/trainer-ssl`: self-supervised pretraining for Tessera, as a trainer plugin (`tessera pretrain`, or
 * `tessera train --trainer inpainting`). The network of any architecture learns to inpaint blanked rectangles of
 * unlabelled tiles, predicting each hidden pixel's colour among a palette fitted to the tiles (cross-entropy over
 * palette colours, as image GPT does, so the architecture's own softmax head serves). The result is an ordinary model
 * folder; `tessera train --init` starts from it, re-initialising only the head for the real classes.
 */
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  createRandom,
  defaultTrainer,
  InvalidOptionError,
  resolveTrainOptions,
  TRAINER_API_VERSION,
  writeFileAtomic,
  writePng,
  type ClassMap,
  type TrainerPlugin,
  type TrainRequest,
  type TrainResult,
} from '@tessera/core';
import { openSlide } from '@tessera/tiler';
import { MASKED_SHARE, maskRegions } from './mask.js';
import { fitPalette, quantize } from './palette.js';
import { listSources, sampleTiles, type SourceTiles } from './sample.js';
export { fitPalette, quantize } from './palette.js';
export { maskRegions, MASKED_SHARE } from './mask.js';
export { listSources, sampleTiles, SOURCE_EXTENSIONS, type SourceTiles } from './sample.js';

/** Options of {@link inpaintingTrainer}. */
export interface InpaintingOptions {
  /** Colours of the palette the network predicts. Default 16. */
  palette?: number;
  /** Tiles sampled from each slide (and at most cut from each image). Default 64. */
  tilesPerSource?: number;
  /** Share of a slide tile's thumbnail pixels that must be tissue. Default 0.5. */
  minTissue?: number;
}

/** `pretraining.json` of a pretrained model folder: what it learnt from, and how. */
export interface PretrainingRecord {
  method: string;
  palette: number[][];
  maskedShare: readonly [number, number];
  tileSize: number;
  mpp: number | null;
  tiles: number;
  sources: SourceTiles[];
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
    async train(request: TrainRequest): Promise<TrainResult> {
      const o = resolveTrainOptions(request.options);
      const random = createRandom(o.seed).fork('pretraining');
      const files = await listSources(request.sources ?? [request.images]);
      const first = await openSlide(files[0]);
      const channels = first.channels === 1 ? 1 : 3;
      const { tiles, sources } = await sampleTiles(
        files,
        { tile: o.tileSize, channels, mpp: request.mpp, perSource, minTissue },
        random.fork('tiles'),
      );
      if (tiles.length < 2) {
        throw new InvalidOptionError(
          `Expected at least 2 tiles of ${o.tileSize} px to pretrain on, but the inputs gave ${tiles.length}: ` +
            sources.map((s) => `${s.path}: ${s.tiles}${s.note ? ` (${s.note})` : ''}`).join('; '),
          'Give more or larger images, or a smaller --tile.',
        );
      }
      const palette = fitPalette(tiles, k, random.fork('palette'));
      const classes: ClassMap = {
        classes: palette.map((colour, value) => ({
          name: `colour-${value}`,
          value,
          color: `#${(colour.length === 1 ? [colour[0], colour[0], colour[0]] : colour).map((v) => v.toString(16).padStart(2, '0')).join('')}`,
          background: false,
        })),
      };
      const work = await mkdtemp(join(tmpdir(), 'tessera-pretrain-'));
      try {
        await mkdir(join(work, 'images'));
        await mkdir(join(work, 'masks'));
        for (const [i, tile] of tiles.entries()) {
          const name = `tile-${String(i).padStart(5, '0')}.png`;
          await writePng(join(work, 'images', name), tile);
          await writePng(join(work, 'masks', name), {
            data: quantize(tile, palette),
            width: tile.width,
            height: tile.height,
            channels: 1,
          });
        }
        request.onEvent?.({
          type: 'notice',
          level: 'info',
          message:
            `pretraining on ${tiles.length} tiles of ${o.tileSize} px from ${sources.length} source(s) ` +
            `(${sources.filter((s) => s.kind === 'slide').length} slide(s), sampled on tissue): inpainting ` +
            `${MASKED_SHARE.map((v) => `${v * 100}%`).join('-')} of each crop in a palette of ${k} colours`,
        });
        const result = await defaultTrainer().train({
          ...request,
          images: join(work, 'images'),
          masks: join(work, 'masks'),
          classes,
          transformBatch: (image, labels, stepRandom) => maskRegions(image, labels, stepRandom, o.tileSize),
          // No labelled validation exists: the kept weights are the lowest training loss's.
          options: {
            loss: 'cross-entropy',
            valSplit: 0,
            select: 'loss',
            ...Object.fromEntries(Object.entries(request.options ?? {}).filter(([, v]) => v !== undefined)),
          },
        });
        const record: PretrainingRecord = {
          method: 'masked-region inpainting, cross-entropy over a colour palette of the tiles',
          palette,
          maskedShare: MASKED_SHARE,
          tileSize: o.tileSize,
          mpp: request.mpp ?? null,
          tiles: tiles.length,
          sources: sources.map((s) => ({ ...s, path: resolve(s.path) })),
        };
        await writeFileAtomic(join(result.out, 'pretraining.json'), JSON.stringify(record, null, 2) + '\n');
        return result;
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },
  };
}
