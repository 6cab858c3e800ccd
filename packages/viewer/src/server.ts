/**
 * The viewer's web server: the page, OpenSeadragon (from the `openseadragon` package, no CDN), Deep Zoom tiles of the
 * slide and of every layer over it, made on demand and cached, and a small JSON API.
 *
 * Security: no URL names a file. Slides are addressed by their position in the list, static files by a fixed table
 * read at start, so a path such as `..`, `%2e%2e%2f` or `/etc/passwd` matches nothing and gets 404. Bound to
 * 127.0.0.1 by default (and then only requests whose `Host` is a loopback name are answered, against DNS rebinding);
 * with another host a random token is required on every request (in the URL once, then a cookie).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { TesseraError, describeValue } from '@tessera/core';
import { ByteCache } from './cache.js';
import { buildCatalog, type Catalog } from './catalog.js';
import { dziXml, tileRect, type TileRect } from './deep-zoom.js';
import { portUnavailable, TileRequestError, ViewerOptionError } from './errors.js';
import type { LiveModel, LiveOptions } from './live.js';
import { SlideView } from './slide-view.js';
import { colourise, labelTile, slideTile, type ColourTable } from './slide-tiles.js';

/** Options of {@link startViewer}. */
export interface ViewerOptions {
  /** The slide or image to show first. */
  slide: string;
  /** The `--out` folder of `tessera predict`: label map, probabilities, outlines and areas of the slide (and others). */
  predictions?: string;
  /** A model to predict the part in view with, on demand (its classes and colours are used for every layer). */
  model?: LiveModel;
  /** Address to listen on. Default `127.0.0.1`. */
  host?: string;
  /** Port; 0 (the default) takes any free port. */
  port?: number;
  /**
   * Access token every request must carry (`?token=` once, then a cookie; or `Authorization: Bearer`). Default: none
   * on 127.0.0.1, a random one when `host` is given; `null` turns it off.
   */
  token?: string | null;
  /** Bytes of encoded tiles kept in memory. Default 256 MB. */
  cacheBytes?: number;
  /** On-demand prediction: block size and limits. */
  live?: LiveOptions;
  /** Where relative paths start. Default `process.cwd()`. */
  cwd?: string;
  /** Receives one line per server-side failure (default: none). */
  log?: (line: string) => void;
}

/** A running viewer. */
export interface ViewerServer {
  /** The address to open, with the token when there is one. */
  url: string;
  host: string;
  port: number;
  token: string | null;
  /** The slides listed. */
  slides: { id: string; name: string; path: string }[];
  /** Notes for the user (slides listed by the predictions but not found, model folder gone...). */
  warnings: string[];
  /** Tiles served from the cache and made anew. */
  stats(): { hits: number; misses: number; bytes: number; entries: number };
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

/** Default size of the tile cache. */
export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;

const COOKIE = 'tessera_view_token';
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
/** A 1x1 transparent PNG, for tiles with nothing to draw. */
const EMPTY_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg==',
  'base64',
);

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.map': 'application/json',
};

/** The static files: a fixed table of URL path to bytes, read once. */
async function staticFiles(): Promise<Map<string, { body: Buffer; type: string }>> {
  const files = new Map<string, { body: Buffer; type: string }>();
  const here = dirname(fileURLToPath(import.meta.url));
  const staticDir = join(here, '..', 'static');
  for (const name of await readdir(staticDir)) {
    const ext = name.slice(name.lastIndexOf('.'));
    if (!TYPES[ext]) continue;
    files.set(`/static/${name}`, { body: await readFile(join(staticDir, name)), type: TYPES[ext] });
  }
  const index = files.get('/static/index.html');
  if (index) {
    files.set('/', index);
    files.set('/index.html', index);
  }
  const require = createRequire(import.meta.url);
  const osd = dirname(require.resolve('openseadragon'));
  files.set('/vendor/openseadragon/openseadragon.min.js', {
    body: await readFile(join(osd, 'openseadragon.min.js')),
    type: TYPES['.js'],
  });
  for (const name of await readdir(join(osd, 'images'))) {
    if (!name.endsWith('.png')) continue;
    files.set(`/vendor/openseadragon/images/${name}`, {
      body: await readFile(join(osd, 'images', name)),
      type: TYPES['.png'],
    });
  }
  return files;
}

const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy':
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; " +
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
};

function send(
  res: ServerResponse,
  status: number,
  body: Buffer | string,
  type: string,
  headers: Record<string, string> = {},
): void {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': type, 'Content-Length': bytes.length, ...headers });
  res.end(res.req.method === 'HEAD' ? undefined : bytes);
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  send(res, status, JSON.stringify(value), 'application/json; charset=utf-8', {
    'Cache-Control': 'no-store',
    ...headers,
  });
}

function sendError(res: ServerResponse, status: number, message: string, hint?: string): void {
  sendJson(res, status, { error: message, ...(hint ? { hint } : {}) });
}

function sameToken(given: string | undefined, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

function cookieToken(req: IncomingMessage): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === COOKIE) return v.join('=');
  }
  return undefined;
}

/** Visible classes of a layer from the `classes` query parameter: a hex bit mask over class indices (all if absent). */
function classMask(param: string | null, count: number): boolean[] {
  if (param === null) return new Array<boolean>(count).fill(true);
  if (!/^[0-9a-f]{1,64}$/i.test(param)) {
    throw new TileRequestError(
      `Expected the classes parameter to be a hexadecimal bit mask of class indices (1 to 64 digits) but received ` +
        `${describeValue(param)}.`,
      'Bit i set shows class i, e.g. classes=6 for classes 1 and 2; leave it out for all classes.',
    );
  }
  const bits = BigInt(`0x${param}`);
  return Array.from({ length: count }, (_, i) => ((bits >> BigInt(i)) & 1n) === 1n);
}

/** Colour table by class value (labels) or by class index (outlines); the background and hidden classes are clear. */
function colourTable(view: SlideView, visible: boolean[], by: 'value' | 'index'): ColourTable {
  const table = new Uint8Array(256 * 4);
  for (const c of view.classes) {
    if (c.background || !visible[c.index]) continue;
    const at = (by === 'value' ? c.value : c.index) * 4;
    table.set([...c.rgb, 255], at);
  }
  if (by === 'index') table.set([255, 255, 0, 255], 255 * 4); // polygons of classes the model does not name
  return table;
}

async function encodePng(rgba: Uint8Array, width: number, height: number): Promise<Buffer> {
  let any = false;
  for (let i = 3; i < rgba.length; i += 4) {
    if (rgba[i]) {
      any = true;
      break;
    }
  }
  if (!any) return EMPTY_PNG;
  return sharp(rgba, { raw: { width, height, channels: 4 } })
    .png({ compressionLevel: 1, adaptiveFiltering: false })
    .toBuffer();
}

/** Parses `<column>_<row>.<ext>`. */
function tileName(name: string, ext: string): [string, string] {
  const match = new RegExp(`^([^_]*)_([^_]*)\\.${ext}$`).exec(name);
  if (!match) {
    throw new TileRequestError(
      `Expected a tile name <column>_<row>.${ext} but received ${describeValue(name)}.`,
      'Tile URLs are <level>/<column>_<row>.<format>; the levels and their tile counts are in /api/slides.',
    );
  }
  return [match[1], match[2]];
}

/** Reads a JSON request body of at most 4 kB. */
async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 4096) throw new TileRequestError('Expected a request body of at most 4096 bytes.');
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new TileRequestError('Expected a JSON request body {"x", "y", "width", "height"} in level-0 pixels.');
  }
}

function integerParam(params: URLSearchParams, name: string, min: number, max: number): number {
  const text = params.get(name);
  const value = text !== null && /^\d{1,9}$/.test(text) ? Number(text) : NaN;
  if (!(value >= min && value <= max)) {
    throw new TileRequestError(
      `Expected ${name} to be an integer between ${min} and ${max} (level-0 pixels) but received ` +
        `${describeValue(text ?? undefined)}.`,
    );
  }
  return value;
}

/**
 * Starts the viewer: finds the slide's predictions, opens the slides, and listens.
 * @throws {@link ViewerInputError} when the slide, the predictions folder or the slide's label map is missing.
 * @throws {@link ViewerOptionError} when the port or the host cannot be used.
 * @example
 * const viewer = await startViewer({ slide: 'CMU-1.svs', predictions: 'slides' });
 * console.log(viewer.url); // http://127.0.0.1:41234/
 */
export async function startViewer(options: ViewerOptions): Promise<ViewerServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 0;
  if (!(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new ViewerOptionError(
      `Expected --port to be an integer between 0 and 65535 but received ${describeValue(port)}.`,
      'Use 0 for any free port.',
    );
  }
  const cacheBytes = options.cacheBytes ?? DEFAULT_CACHE_BYTES;
  if (!(Number.isFinite(cacheBytes) && cacheBytes >= 0)) {
    throw new ViewerOptionError(`Expected a tile cache size >= 0 bytes but received ${describeValue(cacheBytes)}.`);
  }
  const token =
    options.token === undefined
      ? options.host === undefined
        ? null
        : randomBytes(18).toString('base64url')
      : options.token;
  const catalog: Catalog = await buildCatalog({
    slide: options.slide,
    predictions: options.predictions,
    manifest: options.model?.manifest,
    cwd: options.cwd,
  });
  const views: SlideView[] = [];
  for (const entry of catalog.entries) {
    try {
      views.push(await SlideView.open(entry, catalog.classes, catalog.classesFrom, options.model, options.live));
    } catch (error) {
      if (entry.id === '0') throw error;
      catalog.warnings.push(`${entry.slidePath} is left out of the list: ${(error as Error).message}`);
    }
  }
  views.forEach((v, i) => (v.entry.id = String(i)));
  const byId = new Map(views.map((v) => [v.entry.id, v]));
  const files = await staticFiles();
  const tiles = new ByteCache<Buffer>(cacheBytes, (b) => b.length + 100);
  const labelValues = new ByteCache<Uint8Array>(Math.min(64 * 1024 * 1024, cacheBytes), (b) => b.length + 100);
  const version = randomBytes(6).toString('hex');
  const log = options.log ?? (() => {});

  const slideList = async () => ({
    version,
    token: token !== null,
    slides: await Promise.all(views.map((v) => v.describe())),
    warnings: catalog.warnings,
  });

  async function tile(view: SlideView, layer: string, rect: TileRect, params: URLSearchParams): Promise<Buffer> {
    const id = view.entry.id;
    const at = `${rect.level}/${rect.column}_${rect.row}`;
    if (layer === 'image') {
      return tiles.get(`${id}/image/${at}`, async () => {
        const image = await slideTile(view.source, view.dz, rect);
        return sharp(image.data, {
          raw: { width: image.width, height: image.height, channels: image.channels as 1 | 3 },
        })
          .jpeg({ quality: 90, chromaSubsampling: '4:4:4' })
          .toBuffer();
      });
    }
    const visible = classMask(params.get('classes'), view.classes.length);
    const mask = visible.map((v) => (v ? '1' : '0')).join('');
    if (layer === 'labels') {
      if (!view.labels) throw new TileRequestError(`Slide ${id} (${view.entry.name}) has no label map to draw.`);
      const labels = view.labels;
      return tiles.get(`${id}/labels/${mask}/${at}`, async () => {
        const values = await labelValues.get(`${id}/${at}`, () => labelTile(labels, view.dz, rect));
        return encodePng(colourise(values, colourTable(view, visible, 'value')), rect.width, rect.height);
      });
    }
    if (layer === 'outlines') {
      const outlines = view.outlines();
      if (!outlines) throw new TileRequestError(`Slide ${id} (${view.entry.name}) has no GeoJSON outlines to draw.`);
      // Below half of full resolution outlines are too dense to read: the label overlay shows the classes there.
      if (rect.downsample > 2) return EMPTY_PNG;
      return tiles.get(`${id}/outlines/${mask}/${at}`, async () => {
        const drawn = (await outlines).draw(rect, colourTable(view, visible, 'index'));
        return drawn ? encodePng(drawn, rect.width, rect.height) : EMPTY_PNG;
      });
    }
    if (layer === 'live') {
      const live = view.live;
      if (!live) throw new TileRequestError(`Slide ${id} (${view.entry.name}): no --model to predict with.`);
      const generation = live.generation;
      return tiles.get(`${id}/live/${generation}/${mask}/${at}`, async () => {
        const made = live.tile(view.dz, rect);
        if (!made) return EMPTY_PNG;
        return encodePng(
          colourise(made.values, colourTable(view, visible, 'value'), made.known),
          rect.width,
          rect.height,
        );
      });
    }
    throw new TileRequestError(`Unknown layer ${describeValue(layer)}: expected image, labels, outlines or live.`);
  }

  async function pixel(view: SlideView, params: URLSearchParams) {
    const s = view.source.slide;
    const x = integerParam(params, 'x', 0, s.width - 1);
    const y = integerParam(params, 'y', 0, s.height - 1);
    const rgb = Array.from((await view.source.read({ x, y, width: 1, height: 1 }, 0)).data);
    const result: Record<string, unknown> = { x, y, rgb };
    const classOf = (value: number) => view.classes.find((c) => c.value === value);
    if (view.labels) {
      const l = view.labels.slide;
      const lx = Math.min(l.width - 1, Math.floor((x * l.width) / s.width));
      const ly = Math.min(l.height - 1, Math.floor((y * l.height) / s.height));
      const value = (await view.labels.read({ x: lx, y: ly, width: 1, height: 1 }, 0)).data[0];
      const cls = classOf(value);
      result.label = { value, name: cls?.name ?? null, index: cls?.index ?? null };
      if (view.probabilities.length) {
        result.probabilities = await Promise.all(
          view.probabilities.map(async (p) => ({
            name: p.name,
            p: (await p.source.read({ x: lx, y: ly, width: 1, height: 1 }, 0)).data[0] / 255,
          })),
        );
      }
    }
    const live = view.live?.pixel(x, y);
    if (live) {
      const cls = classOf(live.value);
      result.live = {
        value: live.value,
        name: cls?.name ?? null,
        index: cls?.index ?? null,
        probabilities: view.classes.map((c) => ({ name: c.name, p: live.probabilities[c.index] })),
      };
    }
    return result;
  }

  function liveStatus(view: SlideView) {
    const live = view.live!;
    return {
      generation: live.generation,
      pending: live.pending,
      predicted: live.predicted,
      error: live.lastError,
      lastMs: Math.round(live.lastMs),
      counts: view.classes.map((c) => ({ name: c.name, pixels: live.counts[c.index] ?? 0 })),
    };
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const raw = req.url ?? '/';
    let url: URL;
    try {
      url = new URL(raw, 'http://viewer.invalid');
    } catch {
      return sendError(res, 400, `Malformed request URL ${describeValue(raw)}.`);
    }
    if (token !== null) {
      const given =
        url.searchParams.get('token') ?? cookieToken(req) ?? /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (!sameToken(given, token)) {
        return sendError(res, 403, 'This viewer needs its access token.', 'Open the URL that tessera view printed.');
      }
    } else {
      const hostName = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase();
      if (!LOOPBACK.has(hostName)) {
        return sendError(res, 403, `Requests for host ${describeValue(req.headers.host)} are refused.`);
      }
    }
    // Path segments, percent-decoded one by one: a segment that is or holds a path step matches no route.
    const rawPath = raw.split('?')[0];
    let segments: string[];
    try {
      segments = rawPath.split('/').slice(1).map(decodeURIComponent);
    } catch {
      return sendError(res, 400, `Malformed percent-encoding in ${describeValue(rawPath)}.`);
    }
    if (segments.some((s) => s === '..' || s === '.' || /[/\\\0]/.test(s)) || rawPath.includes('\\')) {
      return sendError(res, 404, 'Not found.');
    }
    const path = '/' + segments.join('/');
    const cookie: Record<string, string> =
      token !== null && url.searchParams.get('token') !== null
        ? { 'Set-Cookie': `${COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/` }
        : {};
    if (method !== 'GET' && method !== 'HEAD' && method !== 'POST') {
      return sendError(res, 405, `Method ${method} is not allowed: expected GET, HEAD or POST.`);
    }
    const file = files.get(path);
    if (file && method !== 'POST') {
      const cache = path.startsWith('/vendor/') ? 'public, max-age=86400' : 'no-cache';
      return send(res, 200, file.body, file.type, { 'Cache-Control': cache, ...cookie });
    }
    if (path === '/api/slides' && method !== 'POST') return sendJson(res, 200, await slideList());
    if (path === '/api/stats' && method !== 'POST') {
      return sendJson(res, 200, {
        tiles: { hits: tiles.hits, misses: tiles.misses, bytes: tiles.bytes, entries: tiles.size },
      });
    }
    const [first, id, ...rest] = segments;
    const view = id === undefined ? undefined : byId.get(id);
    if (first === 'api' && segments[1] === 'slides' && segments.length >= 3) {
      const apiView = byId.get(segments[2]);
      if (!apiView) return sendError(res, 404, `No slide ${describeValue(segments[2])}: see /api/slides.`);
      const action = segments.slice(3).join('/');
      if (action === '' && method !== 'POST') return sendJson(res, 200, await apiView.describe());
      if (action === 'pixel' && method !== 'POST') return sendJson(res, 200, await pixel(apiView, url.searchParams));
      if (action === 'live' && method !== 'POST') {
        if (!apiView.live) return sendError(res, 404, 'No --model: nothing is predicted on demand.');
        return sendJson(res, 200, liveStatus(apiView));
      }
      if (action === 'predict' && method === 'POST') {
        if (!apiView.live) return sendError(res, 404, 'No --model: nothing is predicted on demand.');
        const body = (await readBody(req)) as Record<string, unknown>;
        const s = apiView.source.slide;
        const num = (k: string) => {
          const v = body?.[k];
          if (typeof v !== 'number' || !Number.isFinite(v)) {
            throw new TileRequestError(
              `Expected ${k} to be a number of level-0 pixels but received ${describeValue(v)}.`,
            );
          }
          return v;
        };
        const x0 = Math.max(0, Math.floor(num('x')));
        const y0 = Math.max(0, Math.floor(num('y')));
        const x1 = Math.min(s.width, Math.ceil(num('x') + num('width')));
        const y1 = Math.min(s.height, Math.ceil(num('y') + num('height')));
        if (x1 <= x0 || y1 <= y0) {
          throw new TileRequestError(`Expected a region that meets the slide (${s.width}x${s.height}).`);
        }
        const answer = apiView.live.request({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 });
        return sendJson(res, 200, { ...answer, ...liveStatus(apiView) });
      }
      return sendError(res, 404, 'Not found.');
    }
    if (first === 'slides' && view && method !== 'POST') {
      if (rest.length === 1 && rest[0] === 'report.html' && view.entry.reportPath) {
        return send(res, 200, await readFile(view.entry.reportPath), TYPES['.html']);
      }
      if (rest.length === 1 && /^(image|labels)\.dzi$/.test(rest[0])) {
        const layer = rest[0].slice(0, -4);
        return send(res, 200, dziXml(view.dz, layer === 'image' ? 'jpeg' : 'png'), 'application/xml');
      }
      const layerMatch = rest.length === 3 ? /^(image|labels|outlines|live)_files$/.exec(rest[0]) : null;
      if (layerMatch) {
        const layer = layerMatch[1];
        const ext = layer === 'image' ? 'jpeg' : 'png';
        const [column, row] = tileName(rest[2], ext);
        const rect = tileRect(view.dz, rest[1], column, row);
        const body = await tile(view, layer, rect, url.searchParams);
        const cache = layer === 'live' ? 'no-store' : 'private, max-age=3600';
        return send(res, 200, body, ext === 'jpeg' ? 'image/jpeg' : 'image/png', { 'Cache-Control': cache });
      }
    }
    return sendError(res, 404, 'Not found.');
  }

  const server: Server = createServer((req, res) => {
    route(req, res).catch((error: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (error instanceof TileRequestError) return sendError(res, 400, error.message, error.hint);
      const message = error instanceof Error ? error.message : String(error);
      log(`${req.method} ${req.url}: ${message}`);
      sendError(res, 500, message, error instanceof TesseraError ? error.hint : undefined);
    });
  });
  server.on('clientError', (_error, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  await new Promise<void>((resolveListen, reject) => {
    server.once('error', (error) => reject(portUnavailable(host, port, error)));
    server.listen(port, host, () => resolveListen());
  });
  const bound = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `http://${shown}:${bound}/${token !== null ? `?token=${token}` : ''}`,
    host,
    port: bound,
    token,
    slides: views.map((v) => ({ id: v.entry.id, name: v.entry.name, path: v.entry.slidePath })),
    warnings: catalog.warnings,
    stats: () => ({ hits: tiles.hits, misses: tiles.misses, bytes: tiles.bytes, entries: tiles.size }),
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}
