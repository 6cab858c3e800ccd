/** Static sharding of a list of slides for job arrays without a queue server (Kubernetes Indexed Jobs, SLURM). */
import { QueueOptionError } from './errors.js';

/** A shard: this process takes the items `i, i + n, i + 2n, …` of the sorted list. */
export interface Shard {
  index: number;
  count: number;
}

/**
 * Parses `i/N` (0-based index `i` of `N` shards).
 * @throws {@link QueueOptionError} quoting the value.
 * @example
 * parseShard('3/8'); // { index: 3, count: 8 }
 */
export function parseShard(text: string): Shard {
  const match = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = match ? Number(match[1]) : NaN;
  const count = match ? Number(match[2]) : NaN;
  if (!(count >= 1 && index >= 0 && index < count)) {
    throw new QueueOptionError(
      `Expected --shard i/N with 0 <= i < N (e.g. 0/4) but received "${text}".`,
      'Kubernetes Indexed Jobs: --shard $JOB_COMPLETION_INDEX/<completions>; SLURM arrays: ' +
        '--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (with --array=0-<N-1>).',
    );
  }
  return { index, count };
}

/** The items of a shard: the list sorted (so every shard sees the same order), every `count`-th from `index`. */
export function shardOf<T extends string>(items: readonly T[], shard: Shard): T[] {
  return [...items].sort().filter((_, i) => i % shard.count === shard.index);
}
