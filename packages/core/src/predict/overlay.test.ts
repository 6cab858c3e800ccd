import { describe, expect, it } from 'vitest';
import { inferClassMap } from '../data/class-map.js';
import { renderOverlay } from './overlay.js';

describe('renderOverlay', () => {
  const classes = [
    { name: 'Background', value: 0, color: '#000000' },
    { name: 'nucleus', value: 1, color: '#ff0000' },
    { name: 'stroma', value: 7, color: '#00ff00' },
  ];

  it('tints each pixel with its class colour and leaves background and unknown values alone', () => {
    const grey = { data: Uint8Array.from([100, 100, 100, 200]), width: 4, height: 1, channels: 1 };
    const out = renderOverlay(grey, Uint8Array.from([0, 1, 7, 9]), classes, 0.5);
    expect(out.channels).toBe(3);
    expect(Array.from(out.data)).toEqual([100, 100, 100, 178, 50, 50, 50, 178, 50, 200, 200, 200]);
  });

  it('leaves white glass white with an automatic class map (class_0 / class_1), flagged or not', () => {
    // Old model folders: class_0 has no flag, is coloured black, and is the background by its value 0.
    const white = { data: new Uint8Array(3 * 3).fill(255), width: 3, height: 1, channels: 3 };
    const values = Uint8Array.from([0, 1, 0]);
    const old = [
      { name: 'class_0', value: 0, color: '#000000' },
      { name: 'class_1', value: 1, color: '#e6194b' },
    ];
    const red = [
      Math.round(0.6 * 255 + 0.4 * 0xe6),
      Math.round(0.6 * 255 + 0.4 * 0x19),
      Math.round(0.6 * 255 + 0.4 * 0x4b),
    ];
    expect(Array.from(renderOverlay(white, values, old).data)).toEqual([255, 255, 255, ...red, 255, 255, 255]);
    // New automatic maps mark value 0 as the background.
    const inferred = inferClassMap([1, 0, 0]).classes;
    expect(Array.from(renderOverlay(white, values, inferred).data)).toEqual([255, 255, 255, ...red, 255, 255, 255]);
  });

  it('follows an explicit background flag on a non-zero class', () => {
    const grey = { data: Uint8Array.from([100, 100, 100]), width: 3, height: 1, channels: 1 };
    const flagged = [
      { name: 'tumour', value: 0, color: '#ff0000' },
      { name: 'glass', value: 5, color: '#00ff00', background: true },
    ];
    // value 0 is tinted (a real class here), value 5 is left alone.
    expect(Array.from(renderOverlay(grey, Uint8Array.from([0, 5, 0]), flagged, 0.5).data)).toEqual([
      178, 50, 50, 100, 100, 100, 178, 50, 50,
    ]);
    // `background: false` on value 0 and no other candidate: every class is tinted.
    const none = [
      { name: 'tumour', value: 0, color: '#ff0000', background: false },
      { name: 'stroma', value: 5, color: '#00ff00' },
    ];
    expect(Array.from(renderOverlay(grey, Uint8Array.from([0, 5, 0]), none, 0.5).data)).toEqual([
      178, 50, 50, 50, 178, 50, 178, 50, 50,
    ]);
  });

  it('blends RGB images channel by channel', () => {
    const rgb = { data: Uint8Array.from([10, 20, 30]), width: 1, height: 1, channels: 3 };
    expect(Array.from(renderOverlay(rgb, Uint8Array.from([1]), classes, 0.4).data)).toEqual([108, 12, 18]);
  });
});
