/**
 * The skeleton every self-supervised trainer shares: sample tiles from unlabelled images and slides, derive a target
 * for each tile without labels (the pretext task), and train the architecture on them with core's default trainer.
 * A pretext task is a plain object: how it names itself, its classes and targets, and what it adds to the batch.
 */
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  createRandom,
  defaultTrainer,
  InvalidOptionError,
  resolveTrainOptions,
  writeFileAtomic,
  writePng,
  type ClassMap,
  type Random,
  type RasterImage,
  type TrainRequest,
  type TrainResult,
} from '@tessera/core';
import { openSlide } from '@tessera/tiler';
import { listSources, sampleTiles, type SourceTiles } from './sample.js';

/** `pretraining.json` of a pretrained model folder: what it learnt from, and how (plus the task's own fields). */
export interface PretrainingRecord {
  method: string;
  tileSize: number;
  mpp: number | null;
  tiles: number;
  sources: SourceTiles[];
  [field: string]: unknown;
}

/** The tiles a pretext task is given: each with its source's index in `sources`. */
export interface PretrainingTiles {
  tiles: RasterImage[];
  /** `source[i]` is the index in `sources` of the file that tile `i` came from. */
  source: number[];
  sources: SourceTiles[];
  tileSize: number;
  random: Random;
}

/** A pretext task: the targets of the tiles, and what the training record says about it. */
export interface PretextTask {
  classes: ClassMap;
  /** One class index per pixel of each tile. */
  targets: Uint8Array[];
  /** The line printed before training. */
  notice: string;
  /** Changes each training batch (e.g. blanks regions), after augmentation. */
  transformBatch?: TrainRequest['transformBatch'];
  /** Default training options of the task (the user's options override them). */
  options?: TrainRequest['options'];
  /** `method` and the task's fields of `pretraining.json`. */
  record: { method: string; [field: string]: unknown };
}

/** Options of {@link pretrainOnTiles}: how tiles are sampled. */
export interface SamplingOptions {
  /** Tiles sampled from each slide (and at most cut from each image). */
  perSource: number;
  /** Share of a slide tile's thumbnail pixels that must be tissue. */
  minTissue: number;
  /** Refuses inputs the task cannot learn from (e.g. grey images for a colour task), by channel count. */
  channels?: (channels: 1 | 3, path: string) => void;
}

/**
 * Samples tiles of the request's images and slides, builds the pretext task's targets with `task`, and trains on them
 * with core's default trainer (no validation split: there are no labels to validate on, so the kept weights are the
 * lowest training loss's). Writes `pretraining.json` beside the model.
 */
export async function pretrainOnTiles(
  request: TrainRequest,
  sampling: SamplingOptions,
  task: (tiles: PretrainingTiles) => PretextTask,
): Promise<TrainResult> {
  const o = resolveTrainOptions(request.options);
  const random = createRandom(o.seed).fork('pretraining');
  const files = await listSources(request.sources ?? [request.images]);
  const first = await openSlide(files[0]);
  const channels = first.channels === 1 ? 1 : 3;
  sampling.channels?.(channels, files[0]);
  const { tiles, sources } = await sampleTiles(
    files,
    { tile: o.tileSize, channels, mpp: request.mpp, perSource: sampling.perSource, minTissue: sampling.minTissue },
    random.fork('tiles'),
  );
  if (tiles.length < 2) {
    throw new InvalidOptionError(
      `Expected at least 2 tiles of ${o.tileSize} px to pretrain on, but the inputs gave ${tiles.length}: ` +
        sources.map((s) => `${s.path}: ${s.tiles}${s.note ? ` (${s.note})` : ''}`).join('; '),
      'Give more or larger images, or a smaller --tile.',
    );
  }
  const source = sources.flatMap((s, i) => Array<number>(s.tiles).fill(i));
  const pretext = task({ tiles, source, sources, tileSize: o.tileSize, random });
  const work = await mkdtemp(join(tmpdir(), 'tessera-pretrain-'));
  try {
    await mkdir(join(work, 'images'));
    await mkdir(join(work, 'masks'));
    for (const [i, tile] of tiles.entries()) {
      const name = `tile-${String(i).padStart(5, '0')}.png`;
      await writePng(join(work, 'images', name), tile);
      await writePng(join(work, 'masks', name), {
        data: pretext.targets[i],
        width: tile.width,
        height: tile.height,
        channels: 1,
      });
    }
    const slides = sources.filter((s) => s.kind === 'slide').length;
    request.onEvent?.({
      type: 'notice',
      level: 'info',
      message:
        `pretraining on ${tiles.length} tiles of ${o.tileSize} px from ${sources.length} source(s) ` +
        `(${slides} slide(s), sampled on tissue): ${pretext.notice}`,
    });
    const result = await defaultTrainer().train({
      ...request,
      images: join(work, 'images'),
      masks: join(work, 'masks'),
      classes: pretext.classes,
      transformBatch: pretext.transformBatch,
      options: {
        valSplit: 0,
        select: 'loss',
        ...pretext.options,
        ...Object.fromEntries(Object.entries(request.options ?? {}).filter(([, v]) => v !== undefined)),
      },
    });
    const record: PretrainingRecord = {
      ...pretext.record,
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
}
