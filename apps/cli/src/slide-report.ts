import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { markup, writeFileAtomic, type ModelManifest } from '@tessera/core';
import type { SlideOutputs, TilerRun } from '@tessera/tiler';

/** The shell command that opens a slide and its predictions in the viewer (`tessera view`), paths quoted as needed. */
export function viewerCommandLine(slide: string, predictions: string): string {
  const quote = (p: string) => (/^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`);
  return `tessera view ${quote(slide)} --predictions ${quote(predictions)}`;
}

/**
 * Writes `<stem>_report.html` next to a slide's outputs: the overlay, per-class areas, the slide's structure and
 * the run's settings and timings. Self-contained (the overlay is inlined).
 */
export async function writeSlideReport(
  run: TilerRun,
  outputs: SlideOutputs,
  model: string,
  manifest: ModelManifest,
): Promise<string> {
  const stem = basename(outputs.labels).replace(/_labels\.tif$/, '');
  const path = join(dirname(outputs.labels), `${stem}_report.html`);
  const overlay = (await readFile(outputs.overlay)).toString('base64');
  const colours = new Map(manifest.classes.map((c) => [c.value, c.color]));
  const areaRows = outputs.areas.map(
    (a) =>
      markup`<tr><td><span class="swatch" style="background:${colours.get(a.value) ?? '#000'}"></span>${a.name}</td>
<td>${a.value}</td><td>${a.pixels.toLocaleString('en-US')}</td><td>${(a.fraction * 100).toFixed(2)}%</td>
<td>${a.areaUm2 === null ? '–' : (a.areaUm2 / 1e6).toFixed(4)}</td></tr>`,
  );
  const s = run.slide;
  const t = run.timings;
  const rows: [string, string][] = [
    ['slide', `${s.path} (${s.format}, vendor ${s.vendor}, ${(s.bytes / 1e6).toFixed(1)} MB)`],
    ['size', `${s.width} x ${s.height} px, ${s.levels.length} level(s), ${s.channels} channel(s)`],
    ['µm/px', s.mpp ? `${s.mpp.x.toFixed(4)} x ${s.mpp.y.toFixed(4)} (${s.mppSource})` : 'unknown'],
    [
      'predicted at',
      `level ${run.level}${run.scale !== 1 ? `, scale ${run.scale.toFixed(3)}` : ''}: ${run.width} x ${run.height} px${run.mpp ? `, ${run.mpp.toFixed(4)} µm/px` : ''}`,
    ],
    [
      'model',
      `${model}: ${manifest.architecture.name} ${manifest.architecture.version} ${JSON.stringify(manifest.architecture.options)}`,
    ],
    [
      'tiles',
      `${run.tilesPredicted} predicted, ${run.tilesSkipped} skipped as background; tile ${run.options.tile} px, overlap ${run.options.overlap} px, ${run.options.blend} blending`,
    ],
    ['workers', `${run.options.workers} x ${run.engine}, batch ${run.options.batchSize}`],
    [
      'time',
      `${(t.wallMs / 1000).toFixed(1)} s wall (${((run.width * run.height) / 1e6 / (t.wallMs / 1000)).toFixed(2)} Mpx/s); reading ${(t.readMs / 1000).toFixed(1)} s, network ${(t.inferMs / 1000).toFixed(1)} s, merging ${(t.mergeMs / 1000).toFixed(1)} s (summed over workers)`,
    ],
    ['outputs', [outputs.labels, outputs.areasCsv, ...outputs.probabilities].map((p) => basename(p)).join(', ')],
  ];
  if (outputs.polygons) {
    const p = outputs.polygons;
    const counts = p.classes.map((c) => `${c.polygons} ${c.name}${c.dropped ? ` (${c.dropped} dropped)` : ''}`);
    rows.push(['polygons', `${basename(p.path)}: ${counts.join(', ')}; traced in ${(p.ms / 1000).toFixed(2)} s`]);
  }
  const html = markup`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tessera slide report: ${basename(s.path)}</title>
<style>
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}.layout{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.layout img{max-width:640px;max-height:800px;border:1px solid #ddd}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ddd;padding:6px 10px;text-align:right}
th{background:#fafafa}td:first-child{text-align:left}.settings td{text-align:left;max-width:760px;word-break:break-all}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #999;vertical-align:middle}
</style></head><body>
<h1>Slide report: ${basename(s.path)}</h1><p class="sub">${new Date().toISOString()}</p>
<p class="view">Look at the predictions over the slide, from the whole slide down to single nuclei: <code>${viewerCommandLine(s.path, dirname(outputs.labels))}</code></p>
<div class="layout"><img src="${`data:image/png;base64,${overlay}`}" alt="overlay">
<div><h2>Class areas</h2><table><tr><th>class</th><th>value</th><th>pixels</th><th>share</th><th>mm²</th></tr>${areaRows}</table></div></div>
<h2>Slide and run</h2><table class="settings">${rows.map(([k, v]) => markup`<tr><th>${k}</th><td>${v}</td></tr>`)}</table>
</body></html>
`;
  await writeFileAtomic(path, html.text);
  return path;
}
