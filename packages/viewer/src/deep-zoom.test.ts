import { describe, expect, it } from 'vitest';
import { deepZoom, dziXml, levelSize, levelTiles, tileRect } from './deep-zoom.js';
import { TileRequestError } from './errors.js';

describe('Deep Zoom geometry', () => {
  const dz = deepZoom(2220, 2967);

  it('has full resolution at level ceil(log2(longer side)) and halves per level, rounding up', () => {
    expect(dz.maxLevel).toBe(12);
    expect(levelSize(dz, 12)).toEqual({ width: 2220, height: 2967 });
    expect(levelSize(dz, 11)).toEqual({ width: 1110, height: 1484 });
    expect(levelSize(dz, 8)).toEqual({ width: 139, height: 186 });
    expect(levelSize(dz, 0)).toEqual({ width: 1, height: 1 });
    expect(levelTiles(dz, 12)).toEqual({ columns: 9, rows: 12 });
    expect(deepZoom(256, 256).maxLevel).toBe(8);
    expect(deepZoom(257, 1).maxLevel).toBe(9);
    expect(deepZoom(1, 1).maxLevel).toBe(0);
  });

  it('gives tiles a one-pixel overlap on every inner side, clipped at the level edges', () => {
    expect(tileRect(dz, 12, 0, 0)).toMatchObject({ x: 0, y: 0, width: 255, height: 255, downsample: 1 });
    expect(tileRect(dz, 12, 1, 1)).toMatchObject({ x: 253, y: 253, width: 256, height: 256 });
    // Last column of level 12: 8 * 254 - 1 = 2031 to the edge at 2220.
    expect(tileRect(dz, 12, 8, 11)).toMatchObject({ x: 2031, y: 2793, width: 189, height: 174 });
    expect(tileRect(dz, '10', '2', '2')).toMatchObject({ x: 507, y: 507, width: 48, height: 235, downsample: 4 });
  });

  it.each([
    ['13', '0', '0', /level to be an integer between 0 and 12 but received "13" of type string/],
    ['-1', '0', '0', /level to be an integer between 0 and 12/],
    ['12', '9', '0', /level 12: expected column to be an integer between 0 and 8 but received "9"/],
    ['12', '0', '12', /row to be an integer between 0 and 11/],
    ['12', '1.5', '0', /column/],
    ['12', ' 1', '0', /column/],
    ['12', '0x1', '0', /column/],
    ['', '0', '0', /level/],
  ])('refuses level %j column %j row %j with a TileRequestError (HTTP 400)', (l, c, r, message) => {
    let error: unknown;
    try {
      tileRect(dz, l, c, r);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(TileRequestError);
    expect((error as TileRequestError).status).toBe(400);
    expect((error as TileRequestError).code).toBe('E_TILE_REQUEST');
    expect((error as Error).message).toMatch(message);
    expect((error as TileRequestError).hint).toMatch(/<level>\/<column>_<row>/);
  });

  it('describes the pyramid as a .dzi', () => {
    expect(dziXml(dz, 'jpeg')).toContain(
      'Format="jpeg" Overlap="1" TileSize="254"><Size Width="2220" Height="2967"/></Image>',
    );
  });
});
