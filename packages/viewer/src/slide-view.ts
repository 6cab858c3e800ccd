/**
 * One slide of the viewer with everything shown over it: its label map, probability maps, outlines, class legend with
 * areas, and on-demand predictions.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { inferClassMap } from '@tessera/core';
import type { SlideLevel } from '@tessera/tiler';
import { viewerClasses, type SlideEntry, type ViewerClass } from './catalog.js';
import { deepZoom, levelTiles, type DeepZoom } from './deep-zoom.js';
import { ViewerPredictionsError } from './errors.js';
import { LivePredictions, type LiveModel, type LiveOptions } from './live.js';
import { OutlineIndex } from './outlines.js';
import { PixelSource } from './source.js';

/** A row of the class legend: the class and its area in the label map. */
export interface LegendRow extends ViewerClass {
  /** Label-map pixels of the class, its area in µm² (`null` without µm/px), and its share of the slide. */
  pixels: number;
  areaUm2: number | null;
  fraction: number;
  /** Share of the tissue (every class but the background); `null` for the background class. */
  tissueFraction: number | null;
}

/** What the page is told about a slide (`GET /api/slides/<id>`). */
export interface SlideDescription {
  id: string;
  name: string;
  path: string;
  format: string;
  vendor: string;
  width: number;
  height: number;
  mpp: { x: number; y: number } | null;
  levels: Pick<SlideLevel, 'index' | 'width' | 'height' | 'downsample'>[];
  deepZoom: DeepZoom & { levels: { level: number; columns: number; rows: number }[] };
  classes: ViewerClass[];
  legend: LegendRow[] | null;
  /** Where the classes came from. */
  classesFrom: string;
  layers: {
    labels: { path: string; width: number; height: number } | null;
    probabilities: string[];
    outlines: { path: string } | null;
    live: { width: number; height: number; level: number; scale: number; blockSize: number; maxBlocks: number } | null;
  };
  report: boolean;
  warnings: string[];
}

/** Histogram of a one-band map's level 0, read in bands of rows. */
async function histogram(source: PixelSource): Promise<Float64Array> {
  const counts = new Float64Array(256);
  const { width, height } = source.slide;
  const band = Math.max(1, Math.floor((8 * 1024 * 1024) / width));
  for (let y = 0; y < height; y += band) {
    const image = await source.read({ x: 0, y, width, height: Math.min(band, height - y) }, 0);
    const c = image.channels;
    for (let i = 0; i < image.data.length; i += c) counts[image.data[i]]++;
  }
  return counts;
}

/** A slide opened for viewing. */
export class SlideView {
  private outlineIndex?: Promise<OutlineIndex>;
  private legendRows?: Promise<LegendRow[] | null>;

  private constructor(
    readonly entry: SlideEntry,
    readonly source: PixelSource,
    readonly labels: PixelSource | null,
    readonly probabilities: { name: string; source: PixelSource }[],
    readonly classes: ViewerClass[],
    readonly classesFrom: string,
    readonly live: LivePredictions | null,
    readonly warnings: string[],
  ) {}

  /** The Deep Zoom pyramid of the slide (and of every layer drawn over it). */
  get dz(): DeepZoom {
    return deepZoom(this.source.slide.width, this.source.slide.height);
  }

  /**
   * Opens the slide and its prediction files.
   * @throws {@link ViewerPredictionsError} when the label map does not have the slide's aspect ratio.
   */
  static async open(
    entry: SlideEntry,
    classes: ViewerClass[] | null,
    classesFrom: string,
    model?: LiveModel,
    liveOptions?: LiveOptions,
  ): Promise<SlideView> {
    const source = await PixelSource.open(entry.slidePath);
    const warnings: string[] = [];
    let labels: PixelSource | null = null;
    if (entry.labelsPath) {
      labels = await PixelSource.open(entry.labelsPath, 1);
      const s = source.slide;
      const l = labels.slide;
      const rx = l.width / s.width;
      const ry = l.height / s.height;
      if (Math.abs(rx - ry) > Math.max(rx, ry) * 0.01 + 1 / Math.min(l.width, l.height)) {
        throw new ViewerPredictionsError(
          `Label map "${entry.labelsPath}" is ${l.width}x${l.height} but slide "${entry.slidePath}" is ` +
            `${s.width}x${s.height}: expected a label map of the slide's aspect ratio.`,
          'The label map was predicted from another slide of the same name: predict this slide again, or give the ' +
            'right --predictions folder.',
        );
      }
    }
    const probabilities = await Promise.all(
      entry.probabilities.map(async (p) => ({ name: p.name, source: await PixelSource.open(p.path, 1) })),
    );
    let live: LivePredictions | null = null;
    if (model) {
      live = new LivePredictions(source, model, liveOptions);
      warnings.push(...live.warnings);
    }
    let resolved = classes;
    let from = classesFrom;
    if (!resolved && labels) {
      const counts = await histogram(labels);
      const values = [...counts.keys()].filter((v) => counts[v] > 0);
      const map = inferClassMap(values.length > 1 ? values : [...values, values[0] === 0 ? 1 : 0]);
      resolved = viewerClasses(
        map.classes,
        map.classes.map((c) => c.color),
      );
      from = `the values of ${basename(labels.slide.path)} (no model or areas file names them)`;
    }
    return new SlideView(entry, source, labels, probabilities, resolved ?? [], from, live, warnings);
  }

  /** Polygons of `<stem>_polygons.geojson`, read on first use. */
  outlines(): Promise<OutlineIndex> | null {
    if (!this.entry.polygonsPath) return null;
    this.outlineIndex ??= OutlineIndex.load(
      this.entry.polygonsPath,
      this.classes.map((c) => c.name),
      this.source.slide.width,
    );
    return this.outlineIndex;
  }

  /** The class legend with areas: from `<stem>_areas.json`, else counted in the label map; `null` without one. */
  legend(): Promise<LegendRow[] | null> {
    this.legendRows ??= this.makeLegend();
    return this.legendRows;
  }

  private async makeLegend(): Promise<LegendRow[] | null> {
    if (!this.labels) return null;
    const pixels = new Map<number, number>();
    let fromFile: Map<number, number | null> | null = null;
    if (this.entry.areasPath) {
      try {
        const areas = JSON.parse(await readFile(this.entry.areasPath, 'utf8')) as {
          classes: { value: number; pixels: number; areaUm2: number | null }[];
        };
        fromFile = new Map();
        for (const a of areas.classes) {
          pixels.set(a.value, a.pixels);
          fromFile.set(a.value, a.areaUm2);
        }
      } catch (error) {
        this.warnings.push(`${this.entry.areasPath} could not be read (${(error as Error).message}); areas counted.`);
        fromFile = null;
      }
    }
    if (!fromFile) {
      const counts = await histogram(this.labels);
      counts.forEach((n, v) => n > 0 && pixels.set(v, n));
    }
    const s = this.source.slide;
    const l = this.labels.slide;
    const pixelArea = s.mpp ? ((s.mpp.x * s.width) / l.width) * ((s.mpp.y * s.height) / l.height) : null;
    const total = [...pixels.values()].reduce((a, b) => a + b, 0);
    const background = this.classes.find((c) => c.background);
    const tissue = total - (background ? (pixels.get(background.value) ?? 0) : 0);
    return this.classes.map((c) => {
      const n = pixels.get(c.value) ?? 0;
      const area = fromFile?.get(c.value);
      return {
        ...c,
        pixels: n,
        areaUm2: area !== undefined && area !== null ? area : pixelArea === null ? null : n * pixelArea,
        fraction: total ? n / total : 0,
        tissueFraction: c.background ? null : tissue ? n / tissue : 0,
      };
    });
  }

  /** The page's description of the slide. */
  async describe(): Promise<SlideDescription> {
    const s = this.source.slide;
    const dz = this.dz;
    const legend = await this.legend();
    return {
      id: this.entry.id,
      name: this.entry.name,
      path: this.entry.slidePath,
      format: s.format,
      vendor: s.vendor,
      width: s.width,
      height: s.height,
      mpp: s.mpp,
      levels: s.levels.map((l) => ({ index: l.index, width: l.width, height: l.height, downsample: l.downsample })),
      deepZoom: {
        ...dz,
        levels: Array.from({ length: dz.maxLevel + 1 }, (_, level) => ({ level, ...levelTiles(dz, level) })),
      },
      classes: this.classes,
      legend,
      classesFrom: this.classesFrom,
      layers: {
        labels: this.labels
          ? { path: this.labels.slide.path, width: this.labels.slide.width, height: this.labels.slide.height }
          : null,
        probabilities: this.probabilities.map((p) => p.name),
        outlines: this.entry.polygonsPath ? { path: this.entry.polygonsPath } : null,
        live: this.live
          ? {
              width: this.live.width,
              height: this.live.height,
              level: this.live.level,
              scale: this.live.scale,
              blockSize: this.live.blockSize,
              maxBlocks: this.live.maxBlocks,
            }
          : null,
      },
      report: this.entry.reportPath !== null,
      warnings: this.warnings,
    };
  }
}
