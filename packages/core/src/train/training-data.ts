/**
 * The data of a training run: image/mask pairs, the class map, the validation split, one channel count, the
 * normalisation statistics, the decoded samples, and the augmented random crops each step trains on.
 */
import { randCropAugment } from '../data/augment.js';
import { inferClassMap, loadClassMap, type ClassMap } from '../data/class-map.js';
import {
  classPixelNotices,
  collectMaskValues,
  computeNormalization,
  inspectImages,
  loadSamples,
  pairImagesAndMasks,
  type DataNotice,
  type LoadedSample,
  type Normalization,
  type SamplePair,
} from '../data/dataset.js';
import { readImage, readImageHeader } from '../data/image-io.js';
import { shuffle, type Random } from '../data/random.js';
import { DatasetError, InvalidOptionError } from '../errors.js';
import type { ResolvedTrainOptions, TrainRequest } from './options.js';

/** What {@link prepareTrainingData} read. */
export interface TrainingData {
  classMap: ClassMap;
  trainPairs: SamplePair[];
  valPairs: SamplePair[];
  /** How the validation images were chosen, for the manifest. */
  validation: string;
  /** 1 when every training image is stored grey, else 3. */
  channels: 1 | 3;
  normalization: Normalization;
  /** Where `normalization` came from: the training images, or the `inherit` given (when its channels match). */
  normalizationSource: 'training images' | string;
  trainSamples: LoadedSample[];
  valSamples: LoadedSample[];
  /** What reading converted, and what looks wrong (classes with few pixels). */
  notices: DataNotice[];
}

/**
 * Reads a request's data: pairs images with masks, reads or infers the class map, holds out the validation images
 * (the folders given, or `valSplit` of the pairs, seeded), picks one channel count, computes the normalisation on the
 * training images (or takes `inherit`'s, when it has that channel count), and decodes the samples.
 * @throws DatasetError for a single-valued mask set or too few images to split; InvalidOptionError for validation
 * folders given alone.
 */
export async function prepareTrainingData(
  request: TrainRequest,
  o: ResolvedTrainOptions,
  rng: Random,
  inherit?: { normalization: Normalization; channels: number; from: string },
): Promise<TrainingData> {
  const pairs = await pairImagesAndMasks(request.images, request.masks!);
  const classMap = await readClassMap(request.classes, pairs);
  let trainPairs = pairs;
  let valPairs: SamplePair[] = [];
  let validation = 'none';
  if (request.valImages || request.valMasks) {
    if (!request.valImages || !request.valMasks) {
      throw new InvalidOptionError('Validation folders must be given together: --val-images and --val-masks.');
    }
    valPairs = await pairImagesAndMasks(request.valImages, request.valMasks);
    validation = `folders ${request.valImages} and ${request.valMasks}`;
  } else if (o.valSplit > 0) {
    if (pairs.length < 2) {
      throw new DatasetError(
        `Only ${pairs.length} image in ${request.images}: cannot hold out a validation split.`,
        'Add images, pass --val-images/--val-masks, or use --val-split 0.',
      );
    }
    const order = shuffle([...pairs], rng.fork('split'));
    const nVal = Math.min(pairs.length - 1, Math.max(1, Math.round(pairs.length * o.valSplit)));
    const valStems = new Set(order.slice(0, nVal).map((p) => p.stem));
    valPairs = pairs.filter((p) => valStems.has(p.stem));
    trainPairs = pairs.filter((p) => !valStems.has(p.stem));
    validation = `${nVal} of ${pairs.length} images held out (valSplit ${o.valSplit}, seed ${o.seed})`;
  }
  // One channel count for the whole data set: grey when every training image is stored grey.
  const headers = await Promise.all(trainPairs.map((p) => readImageHeader(p.imagePath)));
  const channels: 1 | 3 = headers.every((header) => header.channels === 1) ? 1 : 3;
  const notices = await inspectImages([...trainPairs, ...valPairs], channels);
  let rawImages = await Promise.all(trainPairs.map((p) => readImage(p.imagePath)));
  if (channels === 3 && rawImages.some((image) => image.channels === 1)) {
    rawImages = await Promise.all(trainPairs.map((p) => readImage(p.imagePath, { channels: 3 })));
  }
  const inherited = inherit !== undefined && inherit.channels === channels;
  const normalization: Normalization = inherited ? inherit.normalization : computeNormalization(rawImages);
  const normalizationSource = inherited ? inherit.from : 'training images';
  rawImages = [];
  const trainSamples = await loadSamples(trainPairs, { classMap, channels, normalization });
  const valSamples = await loadSamples(valPairs, { classMap, channels, normalization });
  notices.push(...classPixelNotices([...trainSamples, ...valSamples], classMap, request.classes === undefined));
  return {
    classMap,
    trainPairs,
    valPairs,
    validation,
    channels,
    normalization,
    normalizationSource,
    trainSamples,
    valSamples,
    notices,
  };
}

export async function readClassMap(classes: TrainRequest['classes'], pairs: SamplePair[]): Promise<ClassMap> {
  if (classes === undefined) {
    const values = await collectMaskValues(pairs);
    const map = inferClassMap(values);
    if (map.classes.length < 2) {
      throw new DatasetError(
        `The masks hold a single value (${[...values].join(', ')}); at least two classes are needed to train.`,
        'Check that the masks folder holds label masks, or pass --classes with the class map.',
      );
    }
    return map;
  }
  return typeof classes === 'string' ? loadClassMap(classes) : classes;
}

/** Fills a batch with augmented random crops of the training samples. */
export function fillBatch(
  samples: LoadedSample[],
  o: ResolvedTrainOptions,
  normalization: Normalization,
  rng: Random,
  image: Float32Array,
  labels: Int32Array,
): void {
  const tile = o.tileSize;
  for (let b = 0; b < o.batchSize; b++) {
    const sample = samples[rng.int(samples.length)];
    const crop = randCropAugment(sample, tile, o.augment === false ? {} : o.augment, rng, normalization);
    image.set(crop.image, b * crop.image.length);
    labels.set(crop.labels, b * tile * tile);
  }
}
