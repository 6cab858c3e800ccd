/**
 * Line charts of training curves (loss, IoU, learning rate per epoch) as self-contained SVG, and as PNG through sharp.
 */

import sharp from 'sharp';
import { nice, ticks, tickStep } from 'd3-array';

import { InvalidOptionError, OutputError, describeValue } from '../errors.js';
import { writeFileAtomic } from '../data/image-io.js';
import { escapeMarkup } from '../markup.js';

/** One line of a chart. */
export interface Series {
  /** Name shown in the legend. */
  name: string;
  /** Any SVG colour, e.g. `'#1f77b4'`. */
  color: string;
  /** Points in drawing order; points with a non-finite coordinate (and, on a log axis, `y <= 0`) break the line. */
  points: { x: number; y: number }[];
}

/** Options of {@link renderLineChartSvg} and {@link renderLineChartPng}. */
export interface LineChartOptions {
  /** Title above the chart. */
  title: string;
  /** Label of the horizontal axis, e.g. `'epoch'`. */
  xLabel: string;
  /** Label of the vertical axis, e.g. `'loss'`. */
  yLabel: string;
  /** The lines, drawn in order (later on top) and listed in the legend. */
  series: Series[];
  /** Width in pixels, an integer `>= 200`. Default `800`. */
  width?: number;
  /** Height in pixels, an integer `>= 150`. Default `500`. */
  height?: number;
  /** Logarithmic vertical axis (values `<= 0` are skipped). Default `false`. */
  logY?: boolean;
}

/** The defaults of {@link LineChartOptions}. */
export const LINE_CHART_DEFAULTS = Object.freeze({ width: 800, height: 500, logY: false });

const FONT_FAMILY = 'DejaVu Sans, sans-serif';
/**
 * About `count` "nice" tick values (multiples of 1, 2 or 5 times a power of ten) inside `[min, max]`, ascending, as
 * exact as decimals allow (`0.3`, not `0.30000000000000004`): d3's `ticks`, with the ends in either order.
 *
 * @param min lower end (the ends may come in either order).
 * @param max upper end.
 * @param count the number of ticks wanted, `>= 1`; the result has about that many.
 * @returns the tick values; `[min]` when `min === max`.
 * @throws InvalidOptionError for non-finite ends or a count below 1.
 * @example
 * niceTicks(0, 1, 5); // [0, 0.2, 0.4, 0.6, 0.8, 1]
 * niceTicks(-3, 7, 4); // [-2, 0, 2, 4, 6]
 */
export function niceTicks(min: number, max: number, count: number): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) {
    throw new InvalidOptionError(
      `Expected finite numbers for the ends in niceTicks but received ${describeValue(min)} and ${describeValue(max)}.`,
    );
  }
  if (!(typeof count === 'number' && count >= 1 && Number.isFinite(count))) {
    throw new InvalidOptionError(`Expected a number >= 1 for count in niceTicks but received ${describeValue(count)}.`);
  }
  if (min === max) return [min];
  return min < max ? ticks(min, max, count) : ticks(max, min, count);
}

/** Formats a tick value: fixed decimals that show the step, exponent notation for very large or small values. */
function formatTick(value: number, step: number): string {
  if (value === 0) return '0';
  const abs = Math.abs(value);
  if (abs >= 1e6 || abs < 1e-4) return Number(value.toPrecision(3)).toExponential();
  const decimals = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
  return value.toFixed(decimals);
}

/** Rounds a coordinate to 0.01 px to keep the SVG short. */
function r(value: number): number {
  return Math.round(value * 100) / 100;
}

/** Rough width of a string in DejaVu Sans at `fontSize` (average advance ~0.6 em). */
function textWidth(text: string, fontSize: number): number {
  return text.length * fontSize * 0.6;
}

/** Smallest and largest value (a loop: spreading 100k values into Math.min would overflow the stack). */
function extent(values: number[]): [number, number] {
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

interface Axis {
  min: number;
  max: number;
  ticks: { value: number; label: string }[];
  /** Unlabelled values drawn as fainter grid lines (log axes: 2..9 times each power of ten). */
  minor: number[];
  /** Maps a data value to a pixel coordinate. */
  scale: (value: number) => number;
}

function linearAxis(values: number[], count: number, from: number, to: number): Axis {
  let [lo, hi] = values.length ? extent(values) : [0, 1];
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  [lo, hi] = nice(lo, hi, count);
  const step = tickStep(lo, hi, count);
  const ticks = niceTicks(lo, hi, count).map((value) => ({ value, label: formatTick(value, step) }));
  return { min: lo, max: hi, ticks, minor: [], scale: (v) => from + ((v - lo) / (hi - lo)) * (to - from) };
}

function logAxis(values: number[], from: number, to: number): Axis {
  const [min, max] = extent(values);
  const lo = values.length ? Math.floor(Math.log10(min)) : 0;
  let hi = values.length ? Math.ceil(Math.log10(max)) : 1;
  if (lo === hi) hi = lo + 1;
  const multiples = hi - lo <= 2 ? [1, 2, 5] : [1];
  const stride = Math.max(1, Math.ceil((hi - lo) / 8));
  const ticks: { value: number; label: string }[] = [];
  for (let k = lo; k <= hi; k += stride) {
    for (const m of multiples) {
      if (k === hi && m > 1) break;
      const value = Number((m * Math.pow(10, k)).toPrecision(12));
      ticks.push({ value, label: formatTick(value, value) });
    }
  }
  const minor: number[] = [];
  if (hi - lo <= 6) {
    const major = new Set(ticks.map((t) => t.value));
    for (let k = lo; k < hi; k++) {
      for (let m = 2; m <= 9; m++) {
        const value = Number((m * Math.pow(10, k)).toPrecision(12));
        if (!major.has(value)) minor.push(value);
      }
    }
  }
  const a = Math.pow(10, lo);
  const b = Math.pow(10, hi);
  return {
    min: a,
    max: b,
    ticks,
    minor,
    scale: (v) => from + ((Math.log10(v) - lo) / (hi - lo)) * (to - from),
  };
}

function checkSize(name: string, value: number | undefined, min: number): number | undefined {
  if (value !== undefined && !(Number.isInteger(value) && value >= min && value <= 16384)) {
    throw new InvalidOptionError(
      `Expected an integer in [${min}, 16384] for chart option ${name} but received ${describeValue(value)}.`,
    );
  }
  return value;
}

/**
 * Renders a line chart as a self-contained SVG document (no external fonts, styles or scripts): title, axes with
 * nice tick values, grid lines, axis labels, a legend, and one polyline per series. Points with a non-finite
 * coordinate break the line; a point with no drawable neighbour is drawn as a dot; a series without points appears in
 * the legend only; a chart without any point shows "no data". Fonts: `DejaVu Sans, sans-serif`.
 *
 * @param options see {@link LineChartOptions}.
 * @returns the SVG text.
 * @throws InvalidOptionError for a width or height out of range.
 * @example
 * const svg = renderLineChartSvg({
 *   title: 'Training loss', xLabel: 'epoch', yLabel: 'loss',
 *   series: [{ name: 'train', color: '#1f77b4', points: [{ x: 1, y: 0.9 }, { x: 2, y: 0.5 }] }],
 * });
 */
export function renderLineChartSvg(options: LineChartOptions): string {
  const width = checkSize('width', options.width, 200) ?? LINE_CHART_DEFAULTS.width;
  const height = checkSize('height', options.height, 150) ?? LINE_CHART_DEFAULTS.height;
  const logY = options.logY ?? LINE_CHART_DEFAULTS.logY;
  const series = options.series ?? [];

  const drawable = (p: { x: number; y: number }): boolean =>
    Number.isFinite(p.x) && Number.isFinite(p.y) && (!logY || p.y > 0);
  const points = series.flatMap((s) => s.points.filter(drawable));
  const hasData = points.length > 0;

  // Vertical layout first: the y axis does not depend on the left margin.
  const fontSize = 12;
  const top = options.title ? 44 : 16;
  const bottom = options.xLabel ? 56 : 36;
  const plotBottom = height - bottom;
  const yAxis = logY
    ? logAxis(
        points.map((p) => p.y),
        plotBottom,
        top,
      )
    : linearAxis(
        points.map((p) => p.y),
        Math.max(2, Math.round((plotBottom - top) / 60)),
        plotBottom,
        top,
      );
  const yLabelWidth = Math.max(...yAxis.ticks.map((t) => textWidth(t.label, fontSize)), 8);
  const left = Math.round((options.yLabel ? 30 : 8) + yLabelWidth + 12);
  const right = width - 24;
  const xAxis = linearAxis(
    points.map((p) => p.x),
    Math.max(2, Math.round((right - left) / 90)),
    left,
    right,
  );

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="${FONT_FAMILY}" font-size="${fontSize}">`,
  );
  out.push(`<title>${escapeMarkup(options.title ?? '')}</title>`);
  out.push(
    `<defs><clipPath id="tessera-plot-area"><rect x="${left}" y="${top}" width="${right - left}" height="${
      plotBottom - top
    }"/></clipPath></defs>`,
  );
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  if (options.title) {
    out.push(
      `<text x="${r((left + right) / 2)}" y="28" text-anchor="middle" font-size="16" font-weight="bold" ` +
        `fill="#222222">${escapeMarkup(options.title)}</text>`,
    );
  }

  // Grid lines (crisp on the pixel grid) and tick labels.
  const crisp = (v: number): number => Math.round(v) + 0.5;
  const grid: string[] = [];
  const minorGrid = yAxis.minor.map((v) => {
    const y = crisp(yAxis.scale(v));
    return `<line x1="${left}" y1="${y}" x2="${right}" y2="${y}"/>`;
  });
  const labels: string[] = [];
  for (const t of yAxis.ticks) {
    const y = crisp(yAxis.scale(t.value));
    if (y < top - 1 || y > plotBottom + 1) continue;
    grid.push(`<line x1="${left}" y1="${y}" x2="${right}" y2="${y}"/>`);
    labels.push(`<text x="${left - 8}" y="${r(y + 4)}" text-anchor="end">${escapeMarkup(t.label)}</text>`);
  }
  for (const t of xAxis.ticks) {
    const x = crisp(xAxis.scale(t.value));
    grid.push(`<line x1="${x}" y1="${top}" x2="${x}" y2="${plotBottom}"/>`);
    labels.push(`<text x="${x}" y="${plotBottom + 18}" text-anchor="middle">${escapeMarkup(t.label)}</text>`);
  }
  if (minorGrid.length) out.push(`<g stroke="#f3f3f3" stroke-width="1">${minorGrid.join('')}</g>`);
  out.push(`<g stroke="#e5e5e5" stroke-width="1">${grid.join('')}</g>`);
  out.push(
    `<rect x="${left + 0.5}" y="${top + 0.5}" width="${right - left - 1}" height="${plotBottom - top - 1}" ` +
      `fill="none" stroke="#666666" stroke-width="1"/>`,
  );
  out.push(`<g fill="#444444">${labels.join('')}</g>`);
  if (options.xLabel) {
    out.push(
      `<text x="${r((left + right) / 2)}" y="${height - 14}" text-anchor="middle" font-size="13" fill="#222222">` +
        `${escapeMarkup(options.xLabel)}</text>`,
    );
  }
  if (options.yLabel) {
    const cy = r((top + plotBottom) / 2);
    out.push(
      `<text x="18" y="${cy}" transform="rotate(-90 18 ${cy})" text-anchor="middle" font-size="13" fill="#222222">` +
        `${escapeMarkup(options.yLabel)}</text>`,
    );
  }

  // Series: split at undrawable points; runs of one point become dots.
  const lines: string[] = [];
  for (const s of series) {
    const color = escapeMarkup(s.color);
    const runs: { x: number; y: number }[][] = [[]];
    for (const p of s.points) {
      if (drawable(p)) runs[runs.length - 1].push(p);
      else if (runs[runs.length - 1].length > 0) runs.push([]);
    }
    for (const run of runs) {
      if (run.length === 0) continue;
      const xy = run.map((p) => `${r(xAxis.scale(p.x))},${r(yAxis.scale(p.y))}`);
      if (run.length === 1) {
        const [cx, cy] = xy[0].split(',');
        lines.push(`<circle cx="${cx}" cy="${cy}" r="3.5" fill="${color}"/>`);
      } else {
        lines.push(
          `<polyline points="${xy.join(' ')}" fill="none" stroke="${color}" stroke-width="2" ` +
            `stroke-linejoin="round" stroke-linecap="round"/>`,
        );
      }
    }
  }
  out.push(`<g clip-path="url(#tessera-plot-area)">${lines.join('')}</g>`);
  if (!hasData) {
    out.push(
      `<text x="${r((left + right) / 2)}" y="${r((top + plotBottom) / 2)}" text-anchor="middle" font-size="14" ` +
        `fill="#999999">no data</text>`,
    );
  }

  // Legend, top right inside the plot area.
  if (series.length > 0) {
    const rowHeight = 18;
    const legendWidth = Math.round(44 + Math.max(...series.map((s) => textWidth(s.name, fontSize))));
    const legendHeight = 8 + rowHeight * series.length;
    const lx = right - legendWidth - 8;
    const ly = top + 8;
    out.push(
      `<g><rect x="${lx + 0.5}" y="${ly + 0.5}" width="${legendWidth}" height="${legendHeight}" rx="3" ` +
        `fill="#ffffff" fill-opacity="0.85" stroke="#cccccc"/>`,
    );
    series.forEach((s, i) => {
      const cy = ly + 4 + rowHeight * i + rowHeight / 2;
      const color = escapeMarkup(s.color);
      out.push(
        `<line x1="${lx + 10}" y1="${cy}" x2="${lx + 32}" y2="${cy}" stroke="${color}" stroke-width="2.5" ` +
          `stroke-linecap="round"/>` +
          `<text x="${lx + 38}" y="${cy + 4}" fill="#222222">${escapeMarkup(s.name)}</text>`,
      );
    });
    out.push(`</g>`);
  }
  out.push('</svg>');
  return out.join('\n');
}

/**
 * Renders a line chart (see {@link renderLineChartSvg}) to a PNG file, written atomically (see
 * {@link writeFileAtomic}).
 *
 * @param options see {@link LineChartOptions}.
 * @param outputPath the `.png` file to write; its folder must exist.
 * @throws InvalidOptionError for a width or height out of range.
 * @throws OutputError when the file cannot be rendered or written.
 * @example
 * await renderLineChartPng({ title: 'Loss', xLabel: 'epoch', yLabel: 'loss', series }, 'run/loss.png');
 */
export async function renderLineChartPng(options: LineChartOptions, outputPath: string): Promise<void> {
  const svg = renderLineChartSvg(options);
  let png: Buffer;
  try {
    png = await sharp(Buffer.from(svg)).png().toBuffer();
  } catch (error) {
    throw new OutputError(
      `Could not render the chart PNG "${outputPath}": ${error instanceof Error ? error.message : String(error)}`,
      'Check the chart options (title, labels and series).',
      error,
    );
  }
  await writeFileAtomic(outputPath, png);
}
