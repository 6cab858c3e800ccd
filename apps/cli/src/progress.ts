/** Terminal output: progress bars with rate and ETA on a TTY, plain lines otherwise, nothing when quiet. */
export interface OutputOptions {
  quiet?: boolean;
  json?: boolean;
}

const isTty = () => Boolean(process.stderr.isTTY) && !process.env.CI;
const useColour = () => isTty() && !process.env.NO_COLOR;

/** Wraps text in an ANSI colour when writing to a terminal. */
export function colour(text: string, code: 'red' | 'green' | 'yellow' | 'cyan' | 'dim' | 'bold'): string {
  if (!useColour()) return text;
  const codes = { red: 31, green: 32, yellow: 33, cyan: 36, dim: 2, bold: 1 } as const;
  return `\u001b[${codes[code]}m${text}\u001b[0m`;
}

/** Formats seconds as `1h02m`, `3m05s` or `12.3s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds >= 3600)
    return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
  if (seconds >= 60) return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`;
  return `${seconds.toFixed(1)}s`;
}

/** A progress bar on stderr: `label [#####.....] 12/40 3.1/s ETA 9s  extra`. */
export class ProgressBar {
  private readonly start = performance.now();
  private lastDraw = 0;
  private active = false;

  constructor(
    private readonly label: string,
    private total: number,
    private readonly options: OutputOptions = {},
    private readonly unit = 'it',
  ) {}

  /** Updates the bar to `done` of `total`, with optional trailing text (e.g. the running loss). */
  update(done: number, extra = ''): void {
    if (this.options.quiet || !isTty()) return;
    const now = performance.now();
    if (now - this.lastDraw < 100 && done < this.total) return;
    this.lastDraw = now;
    const elapsed = (now - this.start) / 1000;
    const rate = done / Math.max(elapsed, 1e-9);
    const eta = (this.total - done) / Math.max(rate, 1e-9);
    const width = 24;
    const filled = Math.round((done / Math.max(this.total, 1)) * width);
    const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
    const rateText =
      rate >= 1 ? `${rate.toFixed(1)} ${this.unit}/s` : `${(1 / Math.max(rate, 1e-9)).toFixed(1)} s/${this.unit}`;
    const line = `${this.label} [${bar}] ${done}/${this.total} ${rateText} ETA ${formatDuration(eta)} ${extra}`;
    process.stderr.write(`\r\u001b[2K${line.slice(0, (process.stderr.columns ?? 120) - 1)}`);
    this.active = true;
  }

  /** Clears the bar so a normal line can be printed. */
  clear(): void {
    if (this.active) process.stderr.write('\r\u001b[2K');
    this.active = false;
  }
}

/** Prints an informational line on stderr unless quiet. */
export function info(options: OutputOptions, message: string): void {
  if (!options.quiet) process.stderr.write(message + '\n');
}

/** Prints a warning on stderr (also when quiet: warnings change what the user gets). */
export function warn(_options: OutputOptions, message: string): void {
  process.stderr.write(colour(`warning: ${message}`, 'yellow') + '\n');
}
