import { describe, expect, it } from 'vitest';
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

  it('blends RGB images channel by channel', () => {
    const rgb = { data: Uint8Array.from([10, 20, 30]), width: 1, height: 1, channels: 3 };
    expect(Array.from(renderOverlay(rgb, Uint8Array.from([1]), classes, 0.4).data)).toEqual([108, 12, 18]);
  });
});
