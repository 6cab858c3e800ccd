/**
 * Test helper: a real `redis-server` (Debian's package; `.ci/run` installs it) on a Unix socket in a temporary
 * folder, with persistence off (or AOF on, to restart it mid-run), stopped at the end. BullMQ's Lua scripts need the
 * real server: nothing here is a mock.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Whether `redis-server` is installed. */
export const hasRedis = spawnSync('redis-server', ['--version']).status === 0;

/** A running test server. */
export interface TestRedis {
  url: string;
  socket: string;
  /** Stops the server (SIGKILL with `kill`, as a crash) and starts it again on the same socket and data folder. */
  restart: (kill?: boolean) => Promise<void>;
  stop: () => Promise<void>;
}

async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`test redis: ${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts `redis-server` on a fresh Unix socket; `aof` turns the append-only file on (fsync always). */
export async function startRedis(options: { aof?: boolean } = {}): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-redis-'));
  const socket = join(dir, 'redis.sock');
  let child: ChildProcess;
  const launch = async () => {
    const args = ['--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--dir', dir, '--save', ''];
    args.push('--appendonly', options.aof ? 'yes' : 'no');
    if (options.aof) args.push('--appendfsync', 'always');
    child = spawn('redis-server', args, { stdio: 'ignore' });
    await waitFor(() => existsSync(socket), 10_000, 'the socket did not appear');
  };
  const halt = async (signal: NodeJS.Signals) => {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
    rmSync(socket, { force: true });
  };
  await launch();
  return {
    url: `unix://${socket}`,
    socket,
    restart: async (kill = true) => {
      await halt(kill ? 'SIGKILL' : 'SIGTERM');
      await launch();
    },
    stop: async () => {
      if (child.exitCode === null) await halt('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
