import type { ArchitecturePlugin } from '@tessera/core';

/** Options of {@link linknet}. */
export interface LinknetOptions {
  /** Encoder blocks, each halving the size (the paper uses 4). Input sides must be multiples of `2 ** (depth + 2)`. */
  depth: number;
  /** Filters of the initial block and the first encoder block, doubled per block (64 in the paper). */
  baseFilters: number;
}

/** Defaults of {@link linknet}: the paper's network. */
export declare const LINKNET_DEFAULTS: Readonly<LinknetOptions>;

/** Receptive field of LinkNet in pixels, computed by walking the layers `build()` adds. */
export declare function linknetReceptiveField(options: LinknetOptions): number;

/**
 * LinkNet (Chaurasia and Culurciello, VCIP 2017): residual encoder blocks, decoder blocks of 1x1 convolution, 3x3
 * transposed convolution and 1x1 convolution, additive skips. Maps `[batch, height, width, inputChannels]` to
 * `[batch, height, width, numClasses]` probabilities.
 */
declare function linknet(options?: Partial<LinknetOptions>): ArchitecturePlugin<LinknetOptions>;
export default linknet;
export { linknet };
