import { describe, expect, it } from 'vitest';
import { ByteCache } from './cache.js';

describe('ByteCache', () => {
  const bytes = (n: number) => new Uint8Array(n);

  it('keeps at most its capacity in bytes, dropping the least recently used first', async () => {
    const cache = new ByteCache<Uint8Array>(100, (b) => b.length);
    await cache.get('a', async () => bytes(40));
    await cache.get('b', async () => bytes(40));
    expect(cache.peek('a')?.length).toBe(40); // a is now the most recent
    await cache.get('c', async () => bytes(40));
    expect(cache.peek('b')).toBeUndefined();
    expect(cache.peek('a')?.length).toBe(40);
    expect(cache.bytes).toBe(80);
    expect([cache.hits, cache.misses]).toEqual([0, 3]);
    await cache.get('a', async () => bytes(1));
    expect([cache.hits, cache.misses]).toEqual([1, 3]);
  });

  it('makes a value once for requests that come while it is being made', async () => {
    const cache = new ByteCache<Uint8Array>(100, (b) => b.length);
    let made = 0;
    const make = async () => {
      made++;
      await new Promise((r) => setTimeout(r, 20));
      return bytes(10);
    };
    const [x, y] = await Promise.all([cache.get('k', make), cache.get('k', make)]);
    expect(made).toBe(1);
    expect(x).toBe(y);
  });

  it('does not keep failures, nor values larger than the whole cache', async () => {
    const cache = new ByteCache<Uint8Array>(100, (b) => b.length);
    await expect(cache.get('k', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect((await cache.get('k', async () => bytes(5))).length).toBe(5);
    await cache.get('big', async () => bytes(101));
    expect(cache.peek('big')).toBeUndefined();
    cache.deletePrefix('k');
    expect(cache.size).toBe(0);
  });
});
