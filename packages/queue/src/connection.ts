/**
 * Queue URLs and Redis connections: `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) and
 * `unix:///path/to/redis.sock`. Passwords are never printed: {@link redactUrl} shows a URL without them.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { QueueConnectionError, QueueOptionError } from './errors.js';

/** A parsed queue URL. */
export interface QueueTarget {
  /** ioredis options (host/port/path, credentials, TLS, database). */
  redis: RedisOptions;
  /** The URL with its password replaced by `***`, for messages. */
  display: string;
}

/** The URL without its password. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z+]+:\/\/[^:@/]*:)[^@/]*@/i, '$1***@');
}

/**
 * Parses a queue URL.
 * @throws {@link QueueOptionError} quoting the (redacted) URL and the forms accepted.
 * @example
 * parseQueueUrl('rediss://tessera:secret@redis.lab:6380/2').display; // 'rediss://tessera:***@redis.lab:6380/2'
 */
export function parseQueueUrl(url: string): QueueTarget {
  const display = redactUrl(url);
  const fail = (why: string): never => {
    throw new QueueOptionError(
      `Expected --queue to be a Redis URL but received "${display}": ${why}.`,
      'Use redis://host:6379, rediss://user:password@host:6380 (TLS) or unix:///run/redis/redis.sock.',
    );
  };
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return fail('it is not a URL');
  }
  const redis: RedisOptions = { maxRetriesPerRequest: null, lazyConnect: true };
  if (parsed.protocol === 'unix:' || parsed.protocol === 'redis+unix:') {
    if (!parsed.pathname || parsed.pathname === '/') fail('no socket path');
    redis.path = decodeURIComponent(parsed.pathname);
  } else if (parsed.protocol === 'redis:' || parsed.protocol === 'rediss:') {
    if (!parsed.hostname) fail('no host');
    redis.host = parsed.hostname.replace(/^\[|\]$/g, '');
    redis.port = parsed.port ? Number(parsed.port) : 6379;
    if (parsed.protocol === 'rediss:') redis.tls = { servername: redis.host };
    const db = parsed.pathname.replace(/^\//, '');
    if (db) {
      if (!/^\d+$/.test(db)) fail(`the database "${db}" is not a number`);
      redis.db = Number(db);
    }
  } else {
    fail(`the scheme "${parsed.protocol}" is not redis:, rediss: or unix:`);
  }
  if (parsed.username) redis.username = decodeURIComponent(parsed.username);
  if (parsed.password) redis.password = decodeURIComponent(parsed.password);
  return { redis, display };
}

/**
 * Checks that the server answers within `timeoutMs` (BullMQ's own connections wait for ever, retrying, which is right
 * for a worker riding out a Redis restart but not for a command whose queue URL is wrong).
 * @throws {@link QueueConnectionError} naming the (redacted) URL and the cause.
 */
export async function connect(target: QueueTarget, timeoutMs = 10_000): Promise<void> {
  const client = new Redis({ ...target.redis, connectTimeout: timeoutMs, retryStrategy: () => null });
  client.on('error', () => undefined); // reported by the ping below
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.connect().then(() => client.ping()),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (error) {
    client.disconnect();
    throw new QueueConnectionError(
      `Cannot reach the queue at ${target.display}: ${(error as Error).message.replace(/\.+$/, '')}.`,
      'Start Redis there (or check the host, port, password and TLS), then run the command again.',
      error,
    );
  } finally {
    // A pending timer would keep the process alive: every `tessera queue status` took the full timeout to exit.
    clearTimeout(timer);
  }
  client.disconnect();
}

/** A worker's name (`host:pid`) from BullMQ's `getWorkers()` entry (the part of its client name after `:w:`). */
export function workerName(entry: { [key: string]: string }): string {
  const raw = entry.rawname ?? '';
  const at = raw.indexOf(':w:');
  return at >= 0 ? raw.slice(at + 3) : (entry.addr ?? '?');
}
