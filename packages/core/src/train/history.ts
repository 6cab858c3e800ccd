/** The training history files: `history.csv`, `history.json` and `loss-curve.png`. */
import { join } from 'node:path';
import { writeFileAtomic } from '../data/image-io.js';
import { renderLineChartPng } from './plot.js';
import type { EpochRecord } from './trainer.js';

function toCsv(history: EpochRecord[]): string {
  const keys: (keyof EpochRecord)[] = [
    'epoch',
    'step',
    'lr',
    'trainLoss',
    'valLoss',
    'valPixelAccuracy',
    'valMeanIoU',
    'valMeanDice',
    'valForegroundDice',
    'seconds',
    'elapsed',
  ];
  return [keys.join(','), ...history.map((h) => keys.map((k) => String(h[k])).join(','))].join('\n') + '\n';
}

export async function writeHistory(out: string, history: EpochRecord[]): Promise<void> {
  await writeFileAtomic(join(out, 'history.csv'), toCsv(history));
  await writeFileAtomic(join(out, 'history.json'), JSON.stringify(history, null, 2) + '\n');
  const points = (key: keyof EpochRecord) =>
    history.map((h) => ({ x: h.step, y: h[key] as number })).filter((p) => Number.isFinite(p.y));
  await renderLineChartPng(
    {
      title: 'Loss curve',
      xLabel: 'step',
      yLabel: 'loss',
      series: [
        { name: 'training loss', color: '#1f77b4', points: points('trainLoss') },
        { name: 'validation loss', color: '#d62728', points: points('valLoss') },
      ],
    },
    join(out, 'loss-curve.png'),
  );
}
