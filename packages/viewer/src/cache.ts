/**
 * A least-recently-used cache bounded by bytes, which also shares work in flight: two requests for the same key while
 * it is being made wait for one result.
 */
export class ByteCache<T> {
  private readonly entries = new Map<string, { value: T; bytes: number }>();
  private readonly pending = new Map<string, Promise<T>>();
  private used = 0;
  /** Lookups answered from the cache, and made anew. */
  hits = 0;
  misses = 0;

  /**
   * @param capacity - Bytes kept at most (the least recently used entries go first).
   * @param sizeOf - Bytes an entry takes.
   */
  constructor(
    readonly capacity: number,
    private readonly sizeOf: (value: T) => number,
  ) {}

  /** Bytes held. */
  get bytes(): number {
    return this.used;
  }

  /** Entries held. */
  get size(): number {
    return this.entries.size;
  }

  /** The cached value, marked as recently used, or `undefined`. */
  peek(key: string): T | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.value;
  }

  /** The value of `key`: cached, in flight, or made now with `make` (a failure is not cached). */
  get(key: string, make: () => Promise<T>): Promise<T> {
    const cached = this.peek(key);
    if (cached !== undefined) {
      this.hits++;
      return Promise.resolve(cached);
    }
    const inFlight = this.pending.get(key);
    if (inFlight) {
      this.hits++;
      return inFlight;
    }
    this.misses++;
    const promise = make().then(
      (value) => {
        this.pending.delete(key);
        this.set(key, value);
        return value;
      },
      (error: unknown) => {
        this.pending.delete(key);
        throw error;
      },
    );
    this.pending.set(key, promise);
    return promise;
  }

  /** Stores a value, evicting the least recently used entries beyond the capacity. */
  set(key: string, value: T): void {
    const bytes = this.sizeOf(value);
    const old = this.entries.get(key);
    if (old) {
      this.used -= old.bytes;
      this.entries.delete(key);
    }
    if (bytes > this.capacity) return;
    this.entries.set(key, { value, bytes });
    this.used += bytes;
    for (const [k, e] of this.entries) {
      if (this.used <= this.capacity) break;
      this.entries.delete(k);
      this.used -= e.bytes;
    }
  }

  /** Drops every entry whose key starts with `prefix`. */
  deletePrefix(prefix: string): void {
    for (const [k, e] of this.entries) {
      if (!k.startsWith(prefix)) continue;
      this.entries.delete(k);
      this.used -= e.bytes;
    }
  }
}
