/**
 * Data: seeded random numbers, image and mask files, class maps, data sets on disk and augmentation.
 */

export { type Random, createRandom, restoreRandom, shuffle } from './random.js';
export {
  type ImageHeader,
  type MaskImage,
  type RasterImage,
  type ReadImageOptions,
  IMAGE_EXTENSIONS,
  MAX_IMAGE_PIXELS,
  imageStem,
  readImage,
  readImageHeader,
  readMask,
  writeFileAtomic,
  writePng,
} from './image-io.js';
export {
  type BackgroundCandidate,
  type ClassDef,
  type ClassMap,
  backgroundClass,
  type LabelLookup,
  CLASS_PALETTE,
  IGNORE_INDEX,
  UNKNOWN_INDEX,
  encodeMask,
  inferClassMap,
  loadClassMap,
  makeLabelLookup,
  parseClassMap,
  parseColor,
} from './class-map.js';
export {
  type DataNotice,
  type LoadSamplesOptions,
  type LoadedSample,
  type Normalization,
  type SamplePair,
  MIN_TRAINING_IMAGE_SIDE,
  RARE_CLASS_SHARE,
  classPixelNotices,
  collectMaskValues,
  computeNormalization,
  inspectImages,
  loadSamples,
  naturalCompare,
  normalizeImage,
  normalizeWindow,
  pairImagesAndMasks,
  validateNormalization,
} from './dataset.js';
export {
  type AugmentOptions,
  type CropResult,
  type CropTransform,
  type ResolvedAugmentOptions,
  DEFAULT_AUGMENT,
  HED_FROM_RGB,
  NO_AUGMENT,
  RGB_FROM_HED,
  applyCropTransform,
  hedToRgb,
  randBrightnessContrast,
  randCropAugment,
  randCropTransform,
  randHedJitter,
  randHueSaturation,
  resolveAugmentOptions,
  rgbToHed,
} from './augment.js';
export { type SyntheticTissueOptions, randSyntheticTissue } from './synthetic.js';
