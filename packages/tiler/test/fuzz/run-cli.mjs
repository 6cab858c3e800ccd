/**
 * Runs the real `tessera` command in a child process, the way a user does, and classifies what happened: the exit
 * code, a stack trace or "unexpected failure" on stderr, a run past its time limit (killed with its whole process
 * group: the re-run that `predict` makes of itself and its worker threads), and the peak resident memory of the
 * process tree (sampled from `/proc` every 50 ms; the tree is killed once it passes the bound).
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Exit codes the README documents (2 bad option ... 10 output not writable). */
export const DOCUMENTED_EXIT_CODES = new Set([2, 3, 4, 5, 6, 7, 8, 9, 10]);

/** A Node stack frame or the CLI's last-resort message. */
const STACK = /tessera: unexpected failure|\n\s+at .+(:\d+:\d+\)?|\(node:internal)/;

/** Resident memory (VmHWM: the peak so far) of a process and its descendants, in bytes; 0 once it is gone. */
function treePeak(pid) {
  let total = 0;
  const visit = (p, depth) => {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'latin1');
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
      if (hwm) total += Number(hwm[1]) * 1024;
    } catch {
      return;
    }
    if (depth > 4) return;
    let tasks = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const tid of tasks) {
      let children = '';
      try {
        children = readFileSync(`/proc/${p}/task/${tid}/children`, 'latin1');
      } catch {
        continue;
      }
      for (const child of children.split(' ').filter(Boolean)) visit(Number(child), depth + 1);
    }
  };
  visit(pid, 0);
  return total;
}

/** Files and folders under `dir` whose names do not start with a dot (partial work is hidden). */
export function visibleOutputs(dir) {
  let names = [];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out = [];
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const path = join(dir, name);
    out.push(path);
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) out.push(...visibleOutputs(path));
  }
  return out;
}

/**
 * Runs `node <bin> ...args` and classifies the result.
 * @param {{ bin: string, args: string[], timeoutMs: number, rssLimitBytes: number, env?: object, outDir?: string }} o
 * @returns {Promise<{ outcome: 'success'|'error'|'crash'|'hang'|'memory'|'leftover', code: number|null,
 *   signal: string|null, ms: number, peakBytes: number, stderr: string, stdout: string, leftovers: string[] }>}
 */
export function runCli({ bin, args, timeoutMs, rssLimitBytes, env = {}, outDir }) {
  return new Promise((resolvePromise) => {
    const start = performance.now();
    const child = spawn(process.execPath, [bin, ...args], {
      env: { ...process.env, ...env, FORCE_COLOR: '0', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, so that a kill reaches the re-run and its workers
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout = (stdout + d).slice(-20000)));
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-20000)));
    let peak = 0;
    let killedFor = null;
    const kill = (why) => {
      if (killedFor) return;
      killedFor = why;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const poll = setInterval(() => {
      peak = Math.max(peak, treePeak(child.pid));
      if (peak > rssLimitBytes) kill('memory');
    }, 50);
    const timer = setTimeout(() => kill('hang'), timeoutMs);
    child.on('close', (code, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      // Worker threads or a re-run left behind by a finished parent: never let them outlive the case.
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* the group is gone */
      }
      const ms = performance.now() - start;
      const leftovers = code !== 0 && outDir ? visibleOutputs(outDir) : [];
      let outcome;
      if (killedFor) outcome = killedFor;
      else if (code === 0 && !STACK.test(stderr)) outcome = 'success';
      else if (code !== null && DOCUMENTED_EXIT_CODES.has(code) && !STACK.test(stderr) && /error: /.test(stderr))
        outcome = leftovers.length ? 'leftover' : 'error';
      else outcome = 'crash';
      resolvePromise({ outcome, code, signal, ms, peakBytes: peak, stderr, stdout, leftovers });
    });
  });
}
