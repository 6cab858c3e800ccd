import { join } from 'node:path';
import sharp from 'sharp';
import {
  argmaxLabels,
  loadModel,
  normalizeImage,
  parseColor,
  predictProbabilities,
  readImage,
  readMask,
  renderLineChartSvg,
  markup,
  rawMarkup,
  writeFileAtomic,
  type EpochRecord,
  type Markup,
  type EvaluationReport,
  type ModelManifest,
} from '@tessera/core';

async function pngDataUri(
  data: Uint8Array,
  width: number,
  height: number,
  channels: 1 | 3,
  maxSide = 320,
): Promise<string> {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  const png = await sharp(Buffer.from(data.buffer, data.byteOffset, data.byteLength), {
    raw: { width, height, channels },
  })
    .resize(Math.round(width * scale), Math.round(height * scale), { kernel: channels === 1 ? 'nearest' : 'lanczos3' })
    .png()
    .toBuffer();
  return `data:image/png;base64,${png.toString('base64')}`;
}

function colourise(labels: Uint8Array, colours: [number, number, number][]): Uint8Array {
  const rgb = new Uint8Array(labels.length * 3);
  for (let i = 0; i < labels.length; i++) rgb.set(colours[labels[i]] ?? [0, 0, 0], i * 3);
  return rgb;
}

/** Sample rows of the report: validation image, its mask and the model's prediction, in class colours. */
async function samplePredictions(modelDir: string, manifest: ModelManifest, limit: number): Promise<Markup[]> {
  const training = manifest.training;
  if (!training || training.data.validationStems.length === 0) return [];
  const { model } = await loadModel(modelDir);
  const colours = manifest.classes.map((c) => parseColor(c.color));
  const valueToIndex = new Map(manifest.classes.map((c, i) => [c.value, i]));
  const { readdir } = await import('node:fs/promises');
  const files = await readdir(training.data.images);
  const maskFiles = await readdir(training.data.masks);
  const rows: Markup[] = [];
  for (const stem of training.data.validationStems.slice(0, limit)) {
    const imageFile = files.find((f) => f.replace(/\.[^.]+$/, '') === stem);
    const maskFile = maskFiles.find((f) => f.replace(/\.[^.]+$/, '').replace(/[-_]mask$/, '') === stem);
    if (!imageFile || !maskFile) continue;
    const image = await readImage(join(training.data.images, imageFile), { channels: manifest.inputChannels as 1 | 3 });
    const mask = await readMask(join(training.data.masks, maskFile));
    const probs = await predictProbabilities(
      model,
      {
        data: normalizeImage(image, manifest.normalization),
        width: image.width,
        height: image.height,
        channels: image.channels,
      },
      { multiple: manifest.architecture.inputMultiple },
    );
    const predicted = argmaxLabels(probs, manifest.classes.length);
    const truth = new Uint8Array(mask.data.length);
    for (let i = 0; i < truth.length; i++) truth[i] = valueToIndex.get(mask.data[i]) ?? 0;
    const { width, height } = image;
    const cells = await Promise.all([
      pngDataUri(image.data, width, height, image.channels as 1 | 3),
      pngDataUri(colourise(truth, colours), width, height, 3),
      pngDataUri(colourise(predicted, colours), width, height, 3),
    ]);
    rows.push(
      markup`<tr><td class="stem">${stem}</td>${cells.map((src) => markup`<td><img src="${src}" alt=""></td>`)}</tr>`,
    );
  }
  model.dispose();
  return rows;
}

/**
 * Writes `report.html` into a model folder: loss and metric curves, per-class IoU and Dice, the confusion
 * matrix, and validation images next to their masks and predictions. Self-contained (images inlined).
 */
export async function writeTrainingReport(
  modelDir: string,
  manifest: ModelManifest,
  history: EpochRecord[],
  validation: EvaluationReport,
): Promise<string> {
  const points = (key: keyof EpochRecord) =>
    history.map((h) => ({ x: h.step, y: h[key] as number })).filter((p) => Number.isFinite(p.y));
  const lossSvg = renderLineChartSvg({
    title: 'Loss',
    xLabel: 'step',
    yLabel: 'loss',
    width: 560,
    height: 340,
    series: [
      { name: 'training', color: '#1f77b4', points: points('trainLoss') },
      { name: 'validation', color: '#d62728', points: points('valLoss') },
    ],
  });
  const metricSvg = renderLineChartSvg({
    // The foreground Dice is the curve the kept weights were selected on (see the settings' "kept weights").
    title: `Validation (weights kept at step ${manifest.training?.bestStep ?? '?'})`,
    xLabel: 'step',
    yLabel: 'score',
    width: 560,
    height: 340,
    series: [
      { name: 'pixel accuracy', color: '#2ca02c', points: points('valPixelAccuracy') },
      { name: 'mean IoU', color: '#9467bd', points: points('valMeanIoU') },
      { name: 'mean Dice', color: '#ff7f0e', points: points('valMeanDice') },
      { name: 'foreground Dice', color: '#d62728', points: points('valForegroundDice') },
    ],
  });
  const classes = manifest.classes;
  const swatch = (color: string) => markup`<span class="swatch" style="background:${color}"></span>`;
  const classRows = validation.classes.map(
    (c, i) =>
      markup`<tr><td>${swatch(classes[i]?.color ?? '#000')}${c.name}</td><td>${c.value}</td><td>${c.iou.toFixed(4)}</td><td>${c.dice.toFixed(4)}</td></tr>`,
  );
  const total = validation.confusionMatrix.map((row) => row.reduce((a, b) => a + b, 0));
  const confusion = validation.confusionMatrix.map((row, t) => {
    const cells = row.map((count) => {
      const share = total[t] > 0 ? count / total[t] : 0;
      const shade = Math.round(255 - share * 160);
      return markup`<td style="background:rgb(${shade},${shade},255)">${count.toLocaleString('en-US')}<br><small>${(share * 100).toFixed(1)}%</small></td>`;
    });
    return markup`<tr><th>${classes[t]?.name ?? String(t)}</th>${cells}</tr>`;
  });
  const samples = await samplePredictions(modelDir, manifest, 4);
  const t = manifest.training;
  const settings: [string, string][] = [
    [
      'architecture',
      `${manifest.architecture.name} ${manifest.architecture.version} ${JSON.stringify(manifest.architecture.options)}`,
    ],
    ['parameters', manifest.architecture.parameters.toLocaleString('en-US')],
    [
      'engine',
      t ? `${t.engine.name} (${t.engine.threads === 1 ? '1 thread' : `${t.engine.threads || 'all'} threads`})` : '?',
    ],
    [
      'epochs / steps',
      t ? `${t.epochs} / ${t.steps} (kept step ${t.bestStep ?? '?'}, epoch ${t.bestEpoch}; ${t.stopReason})` : '?',
    ],
    ['kept weights', t?.selection ?? '?'],
    ['training time', t ? `${Math.round(t.durationSeconds)} s` : '?'],
    ['data', t ? `${t.data.trainStems.length} training images; validation: ${t.data.validation}` : '?'],
    ['images / masks', t ? `${t.data.images} / ${t.data.masks}` : '?'],
    ['options', t ? JSON.stringify(t.options) : '?'],
  ];
  const html = markup`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tessera training report: ${modelDir}</title>
<style>
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}.charts{display:flex;gap:16px;flex-wrap:wrap}
.kpi{display:flex;gap:16px;margin:16px 0}.kpi div{background:#f4f6fb;border-radius:8px;padding:10px 16px}
.kpi b{display:block;font-size:22px}table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #ddd;padding:6px 10px;text-align:right}th{background:#fafafa}
td:first-child{text-align:left}.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #999;vertical-align:middle}
.samples img{display:block;max-width:320px;image-rendering:pixelated}.samples td{text-align:center;vertical-align:top}
.settings td{text-align:left;max-width:900px;word-break:break-all}
</style></head><body>
<h1>Training report</h1><p class="sub">${modelDir} &middot; ${manifest.createdAt}</p>
<div class="kpi"><div>pixel accuracy<b>${validation.pixelAccuracy.toFixed(4)}</b></div><div>mean IoU<b>${validation.meanIoU.toFixed(4)}</b></div><div>mean Dice<b>${validation.meanDice.toFixed(4)}</b></div></div>
<h2>Curves</h2><div class="charts">${rawMarkup(lossSvg)}${rawMarkup(metricSvg)}</div>
<h2>Per-class scores (validation, kept weights)</h2>
<table><tr><th>class</th><th>mask value</th><th>IoU</th><th>Dice</th></tr>${classRows}</table>
<h2>Confusion matrix</h2><p class="sub">rows: true class; columns: predicted class; share of the row's pixels</p>
<table><tr><th></th>${classes.map((c) => markup`<th>${c.name}</th>`)}</tr>${confusion}</table>
<h2>Validation samples</h2>
${samples.length ? markup`<table class="samples"><tr><th>image</th><th>input</th><th>mask</th><th>prediction</th></tr>${samples}</table>` : markup`<p>No validation images.</p>`}
<h2>Settings</h2><table class="settings">${settings.map(([k, v]) => markup`<tr><th>${k}</th><td>${v}</td></tr>`)}</table>
</body></html>
`;
  const path = join(modelDir, 'report.html');
  await writeFileAtomic(path, html.text);
  return path;
}
