import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';

import { OutputError } from '../errors.js';
import { niceTicks, renderLineChartPng, renderLineChartSvg, type LineChartOptions } from './plot.js';

const dir = mkdtempSync(path.join(tmpdir(), 'tessera-plot-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('niceTicks', () => {
  it('returns multiples of 1, 2 or 5 times a power of ten, exact decimals', () => {
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(niceTicks(0, 100, 5)).toEqual([0, 20, 40, 60, 80, 100]);
    // raw step 10 / 4 = 2.5 -> 2 (2.5 < sqrt(10))
    expect(niceTicks(-3, 7, 4)).toEqual([-2, 0, 2, 4, 6]);
    // raw step 0.0032 / 3 = 0.00107 -> 0.001
    expect(niceTicks(0.001, 0.0042, 3)).toEqual([0.001, 0.002, 0.003, 0.004]);
    // raw step 0.3 / 3 = 0.1 -> 0.1; values built as i / 10, so 0.3 and not 0.30000000000000004
    expect(niceTicks(0.1, 0.4, 3)).toEqual([0.1, 0.2, 0.3, 0.4]);
    // raw step 1300 / 3 = 433 -> 500 (433 >= 100 * sqrt(10))
    expect(niceTicks(1200, 2500, 3)).toEqual([1500, 2000, 2500]);
    expect(niceTicks(10, 0, 2)).toEqual([0, 5, 10]);
    expect(niceTicks(5, 5, 3)).toEqual([5]);
  });

  it('rejects non-finite ends and a count below 1', () => {
    expect(() => niceTicks(0, Infinity, 5)).toThrow(/Expected finite numbers for the ends in niceTicks/);
    expect(() => niceTicks(0, 1, 0)).toThrow(
      'Expected a number >= 1 for count in niceTicks but received 0 of type number.',
    );
  });
});

function lossCurves(): LineChartOptions {
  const epochs = Array.from({ length: 30 }, (_, i) => i + 1);
  return {
    title: 'U-Net training <nuclei>',
    xLabel: 'epoch',
    yLabel: 'loss',
    width: 640,
    height: 400,
    series: [
      { name: 'train', color: '#1f77b4', points: epochs.map((x) => ({ x, y: 0.15 + 1.2 / x })) },
      { name: 'validation', color: '#d62728', points: epochs.map((x) => ({ x, y: 0.3 + 1.4 / x })) },
    ],
  };
}

/** The vertices of every `<polyline>` of an SVG, per polyline. */
function polylines(svg: string): { color: string; xy: [number, number][] }[] {
  return [...svg.matchAll(/<polyline points="([^"]+)"[^>]*stroke="([^"]+)"/g)].map((m) => ({
    color: m[2],
    xy: m[1].split(' ').map((pair) => pair.split(',').map(Number) as [number, number]),
  }));
}

function hex(color: string): [number, number, number] {
  return [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16)) as [number, number, number];
}

describe('renderLineChartSvg', () => {
  it('draws axes, grid, labels, legend and one polyline per series, escaping text', () => {
    const svg = renderLineChartSvg(lossCurves());
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="400"')).toBe(true);
    expect(svg).toContain('font-family="DejaVu Sans, sans-serif"');
    expect(svg).toContain('U-Net training &lt;nuclei&gt;');
    expect(svg).not.toContain('<nuclei>');
    const lines = polylines(svg);
    expect(lines.map((l) => l.color)).toEqual(['#1f77b4', '#d62728']);
    expect(lines[0].xy).toHaveLength(30);
    // y: data in [0.19, 1.7], 5 ticks wanted -> step 0.5, niced domain [0, 2]; x: [1, 30], 6 ticks -> step 5
    for (const label of [
      '>0<',
      '>0.5<',
      '>1.0<',
      '>2.0<',
      '>5<',
      '>30<',
      '>train<',
      '>validation<',
      '>epoch<',
      '>loss<',
    ]) {
      expect(svg).toContain(label);
    }
  });

  it('breaks lines at NaN points, draws lone points as dots, and handles empty series', () => {
    const svg = renderLineChartSvg({
      title: 't',
      xLabel: 'x',
      yLabel: 'y',
      series: [
        {
          name: 'a',
          color: '#000000',
          points: [
            { x: 0, y: 1 },
            { x: 1, y: 2 },
            { x: 2, y: NaN },
            { x: 3, y: 1 },
            { x: 4, y: NaN },
            { x: 5, y: 3 },
            { x: 6, y: 2 },
          ],
        },
        { name: 'empty', color: '#ff0000', points: [] },
      ],
    });
    // runs: [0, 1], [3], [5, 6] -> two polylines of 2 points, one dot
    expect(polylines(svg).map((l) => l.xy.length)).toEqual([2, 2]);
    expect(svg.match(/<circle /g)).toHaveLength(1);
    expect(svg).toContain('>empty<');
    expect(svg).not.toContain('NaN');
  });

  it('says "no data" when nothing can be drawn, and skips y <= 0 on a log axis', () => {
    const empty = renderLineChartSvg({ title: 't', xLabel: 'x', yLabel: 'y', series: [] });
    expect(empty).toContain('>no data<');
    expect(empty).not.toContain('NaN');
    const log = renderLineChartSvg({
      title: 't',
      xLabel: 'x',
      yLabel: 'y',
      logY: true,
      series: [{ name: 'lr', color: '#000000', points: [0.1, 0.01, 0, 0.001].map((y, x) => ({ x, y })) }],
    });
    // decades 1e-3 .. 1e-1 with 2 and 5 multiples; the y = 0 point breaks the line
    for (const label of ['>0.001<', '>0.002<', '>0.005<', '>0.01<', '>0.1<']) expect(log).toContain(label);
    expect(polylines(log).map((l) => l.xy.length)).toEqual([2]);
    expect(log.match(/<circle /g)).toHaveLength(1);
  });

  it('handles long series (no spread of all values into Math.min)', () => {
    const points = Array.from({ length: 200_000 }, (_, i) => ({ x: i, y: 1 / (i + 1) }));
    const svg = renderLineChartSvg({
      title: 't',
      xLabel: 'step',
      yLabel: 'loss',
      series: [{ name: 'a', color: '#000', points }],
    });
    expect(polylines(svg)[0].xy).toHaveLength(200_000);
    expect(svg).toContain('>200000<');
  });

  it('rejects a bad size', () => {
    expect(() => renderLineChartSvg({ ...lossCurves(), width: 10 })).toThrow(
      'Expected an integer in [200, 16384] for chart option width but received 10 of type number.',
    );
  });
});

describe('renderLineChartPng', () => {
  it('writes a PNG of the requested size with the series drawn in their colours', async () => {
    const options = lossCurves();
    const file = path.join(dir, 'loss.png');
    await renderLineChartPng(options, file);
    expect(readdirSync(dir)).toEqual(['loss.png']); // no temporary file left behind

    const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([640, 400, 3]);
    const near = (x: number, y: number, rgb: [number, number, number]): boolean => {
      const i = (y * info.width + x) * 3;
      return Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]) < 60;
    };
    // the colour within one pixel of (x, y): a 2 px line covers at least one whole pixel there
    const around = (x: number, y: number, rgb: [number, number, number]): boolean => {
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) if (near(Math.round(x) + dx, Math.round(y) + dy, rgb)) return true;
      }
      return false;
    };
    // Every vertex of each polyline must have that series' colour in the PNG (the curves do not cross and stay
    // clear of the legend in the top right corner).
    for (const line of polylines(renderLineChartSvg(options))) {
      const rgb = hex(line.color);
      const hits = line.xy.filter(([x, y]) => around(x, y, rgb)).length;
      expect(hits, line.color).toBe(line.xy.length);
    }
    // Negative control: no green anywhere, and the background is white.
    let green = 0;
    for (let y = 0; y < info.height; y++) for (let x = 0; x < info.width; x++) if (near(x, y, [44, 160, 44])) green++;
    expect(green).toBe(0);
    expect(near(2, 2, [255, 255, 255])).toBe(true);
  });

  it('fails with OutputError when the folder does not exist', async () => {
    await expect(renderLineChartPng(lossCurves(), path.join(dir, 'missing', 'loss.png'))).rejects.toThrow(OutputError);
  });
});
