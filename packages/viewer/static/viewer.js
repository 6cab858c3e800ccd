/* Tessera viewer: the page. OpenSeadragon draws the slide and the layers over it, all Deep Zoom tiles of the server. */
/* global OpenSeadragon */
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    version: '',
    slides: [],
    slide: null,
    /** Overlay layer: labels (the predictions) or live (the model, on demand). */
    layer: 'labels',
    overlayOn: true,
    opacity: 0.5,
    outlinesOn: true,
    /** Class indices shown. */
    visible: new Set(),
    liveGeneration: 0,
    liveCounts: null,
  };
  /** The tiled images over the slide, by name. */
  const layers = { image: null, labels: null, outlines: null, live: null };
  let viewer = null;

  const fmt = (n, digits = 0) =>
    Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

  function classMask() {
    let mask = 0n;
    for (const i of state.visible) mask |= 1n << BigInt(i);
    return mask.toString(16);
  }

  function tileSource(slide, layer, query = '') {
    const dz = slide.deepZoom;
    const ext = layer === 'image' ? 'jpeg' : 'png';
    const minLevel = Math.max(0, dz.maxLevel - Math.ceil(Math.log2(Math.max(dz.width, dz.height) / dz.tileSize)));
    return {
      width: dz.width,
      height: dz.height,
      tileSize: dz.tileSize,
      tileOverlap: dz.overlap,
      minLevel,
      maxLevel: dz.maxLevel,
      getTileUrl: (level, x, y) =>
        `/slides/${slide.id}/${layer}_files/${level}/${x}_${y}.${ext}?v=${state.version}${query}`,
    };
  }

  /** Layer additions and replacements not finished yet (the old layer goes once the new one is drawn). */
  let changing = 0;
  /** Counts slides opened, so that a layer arriving for a slide left meanwhile is dropped. */
  let opened = 0;

  /** Puts the layers in their order: the slide, the class overlay (predictions or live), the outlines on top. */
  function restack() {
    let index = 0;
    for (const name of ['image', 'labels', 'live', 'outlines']) {
      const item = layers[name];
      if (!item || viewer.world.getIndexOfItem(item) < 0) continue;
      viewer.world.setItemIndex(item, Math.min(index, viewer.world.getItemCount() - 1));
      index++;
    }
  }

  /** Replaces (or adds, or with `source` null removes) a layer; the old one goes once the new one is drawn. */
  function setLayer(name, source, opacity) {
    const old = layers[name];
    if (!source) {
      if (old) viewer.world.removeItem(old);
      layers[name] = null;
      return;
    }
    const slideAt = opened;
    changing++;
    viewer.addTiledImage({
      tileSource: source,
      opacity,
      success: (event) => {
        const item = event.item;
        if (slideAt !== opened) {
          changing--;
          viewer.world.removeItem(item);
          return;
        }
        if (layers[name] && layers[name] !== old && viewer.world.getIndexOfItem(layers[name]) >= 0) {
          viewer.world.removeItem(layers[name]); // a newer replacement overtook an unfinished one
        }
        layers[name] = item;
        restack();
        let done = false;
        const drop = () => {
          if (done) return;
          done = true;
          changing--;
          if (old && viewer.world.getIndexOfItem(old) >= 0) viewer.world.removeItem(old);
        };
        if (!old || item.getFullyLoaded()) drop();
        else {
          item.addOnceHandler('fully-loaded-change', drop);
          setTimeout(drop, 2500);
        }
      },
      error: () => {
        changing--;
      },
    });
  }

  function overlayOpacity() {
    return state.overlayOn ? state.opacity : 0;
  }

  /** Outlines stand out a little from the fill of the same colour. */
  function outlineOpacity() {
    return state.overlayOn ? Math.min(1, state.opacity + 0.4) : 0;
  }

  function refreshOverlay() {
    const slide = state.slide;
    if (!slide) return;
    const query = `&classes=${classMask()}`;
    const useLabels = state.layer === 'labels' && slide.layers.labels;
    const useLive = state.layer === 'live' && slide.layers.live;
    setLayer('labels', useLabels ? tileSource(slide, 'labels', query) : null, overlayOpacity());
    setLayer(
      'live',
      useLive ? tileSource(slide, 'live', `${query}&g=${state.liveGeneration}`) : null,
      overlayOpacity(),
    );
    const outlines = slide.layers.outlines && state.outlinesOn && state.layer === 'labels';
    setLayer('outlines', outlines ? tileSource(slide, 'outlines', query) : null, outlineOpacity());
  }

  function applyOpacity() {
    for (const name of ['labels', 'live']) if (layers[name]) layers[name].setOpacity(overlayOpacity());
    if (layers.outlines) layers.outlines.setOpacity(outlineOpacity());
    $('opacity').value = String(Math.round(state.opacity * 100));
    $('opacity-value').textContent = `${Math.round(state.opacity * 100)}%`;
    $('overlay-on').checked = state.overlayOn;
  }

  /* ---------- side bar ---------- */

  function renderSlides() {
    const list = $('slides');
    list.textContent = '';
    for (const slide of state.slides) {
      const li = document.createElement('li');
      li.dataset.id = slide.id;
      li.className = state.slide && slide.id === state.slide.id ? 'current' : '';
      li.textContent = slide.name;
      const meta = document.createElement('span');
      meta.className = 'meta';
      const parts = [`${fmt(slide.width)} x ${fmt(slide.height)} px`];
      if (slide.mpp) parts.push(`${slide.mpp.x.toFixed(3)} µm/px`);
      if (slide.layers.labels) parts.push('labels');
      if (slide.layers.outlines) parts.push('outlines');
      meta.textContent = parts.join(' · ');
      li.appendChild(meta);
      li.addEventListener('click', () => openSlide(slide.id));
      list.appendChild(li);
    }
    $('slides-section').hidden = state.slides.length < 2;
  }

  function legendRows() {
    const slide = state.slide;
    if (state.layer === 'live' && slide.layers.live && state.liveCounts) {
      const live = slide.layers.live;
      const area = slide.mpp
        ? ((slide.mpp.x * slide.width) / live.width) * ((slide.mpp.y * slide.height) / live.height)
        : null;
      const total = state.liveCounts.reduce((a, c) => a + c.pixels, 0);
      const bg = slide.classes.find((c) => c.background);
      const tissue = total - (bg ? state.liveCounts[bg.index].pixels : 0);
      return slide.classes.map((c) => {
        const pixels = state.liveCounts[c.index].pixels;
        return {
          ...c,
          pixels,
          areaUm2: area === null ? null : pixels * area,
          tissueFraction: c.background ? null : tissue ? pixels / tissue : 0,
        };
      });
    }
    return slide.legend ?? slide.classes.map((c) => ({ ...c, pixels: null, areaUm2: null, tissueFraction: null }));
  }

  function renderLegend() {
    const slide = state.slide;
    const body = $('legend').querySelector('tbody');
    body.textContent = '';
    let key = 0;
    const rows = legendRows();
    const tissue = rows.some((r) => !r.background && r.pixels);
    for (const row of rows) {
      const tr = document.createElement('tr');
      tr.dataset.index = String(row.index);
      tr.className = row.background ? 'background' : state.visible.has(row.index) ? '' : 'hidden';
      const toggle = document.createElement('td');
      if (!row.background) {
        const box = document.createElement('input');
        box.type = 'checkbox';
        box.checked = state.visible.has(row.index);
        box.dataset.index = String(row.index);
        box.title = key < 9 ? `show or hide (${key + 1})` : 'show or hide';
        box.addEventListener('change', () => toggleClass(row.index, box.checked));
        toggle.appendChild(box);
        key++;
      }
      const name = document.createElement('td');
      name.className = 'name';
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = row.background ? 'transparent' : row.color;
      name.appendChild(swatch);
      name.appendChild(document.createTextNode(row.name));
      if (row.background) name.title = 'the background class: never tinted, not part of the tissue';
      const cell = (text) => {
        const td = document.createElement('td');
        td.textContent = text;
        return td;
      };
      tr.append(
        toggle,
        name,
        cell(row.pixels === null ? '–' : fmt(row.pixels)),
        cell(row.areaUm2 === null || row.areaUm2 === undefined ? '–' : fmt(row.areaUm2)),
        cell(
          row.tissueFraction === null || row.tissueFraction === undefined || !tissue
            ? '–'
            : `${fmt(row.tissueFraction * 100, 1)}%`,
        ),
      );
      body.appendChild(tr);
    }
    const note = [];
    if (state.layer === 'live' && slide.layers.live) note.push('areas over the blocks predicted so far');
    else if (slide.legend) note.push('areas of the whole label map');
    if (slide.classesFrom) note.push(`classes from ${slide.classesFrom}`);
    $('legend-note').textContent = note.join('; ');
  }

  function renderSlideInfo() {
    const s = state.slide;
    const rows = [
      ['file', s.name],
      ['format', `${s.format} (${s.vendor})`],
      ['size', `${fmt(s.width)} x ${fmt(s.height)} px`],
      ['µm/px', s.mpp ? `${s.mpp.x.toFixed(4)} x ${s.mpp.y.toFixed(4)}` : 'unknown'],
      ['levels', s.levels.map((l) => `${l.width}x${l.height}`).join(', ')],
    ];
    if (s.layers.labels) rows.push(['label map', `${fmt(s.layers.labels.width)} x ${fmt(s.layers.labels.height)} px`]);
    if (s.layers.live)
      rows.push(['live model', `level ${s.layers.live.level}, ${s.layers.live.width} x ${s.layers.live.height} px`]);
    const info = $('slide-info');
    info.textContent = '';
    for (const [k, v] of rows) {
      const div = document.createElement('div');
      const key = document.createElement('span');
      key.className = 'k';
      key.textContent = `${k}: `;
      div.append(key, document.createTextNode(v));
      info.appendChild(div);
    }
    if (s.report) {
      const a = document.createElement('a');
      a.href = `/slides/${s.id}/report.html`;
      a.target = '_blank';
      a.rel = 'noopener';
      a.textContent = 'slide report';
      a.style.color = '#8ab4f8';
      info.appendChild(a);
    }
  }

  function renderControls() {
    const s = state.slide;
    const both = !!(s.layers.labels && s.layers.live);
    $('layer-row').hidden = !both;
    $('layer-labels').checked = state.layer === 'labels';
    $('layer-live').checked = state.layer === 'live';
    $('outlines-row').hidden = !s.layers.outlines;
    $('outlines-on').checked = state.outlinesOn;
    $('overlay-section').hidden = !(s.layers.labels || s.layers.live);
    $('classes-section').hidden = s.classes.length === 0;
    $('live-status').textContent = '';
    const warnings = [...(state.warnings || []), ...s.warnings];
    $('warnings').textContent = warnings.join(' ');
  }

  /* ---------- actions ---------- */

  function toggleClass(index, on) {
    if (on === undefined) on = !state.visible.has(index);
    if (on) state.visible.add(index);
    else state.visible.delete(index);
    renderLegend();
    refreshOverlay();
  }

  function setOverlayLayer(layer) {
    if (!state.slide.layers[layer]) return;
    state.layer = layer;
    renderControls();
    renderLegend();
    refreshOverlay();
    if (layer === 'live') requestLive();
  }

  async function openSlide(id) {
    const slide = state.slides.find((s) => s.id === String(id));
    if (!slide) return;
    state.slide = slide;
    state.layer = slide.layers.labels ? 'labels' : 'live';
    state.visible = new Set(slide.classes.filter((c) => !c.background).map((c) => c.index));
    state.liveGeneration = 0;
    state.liveCounts = null;
    for (const k of Object.keys(layers)) layers[k] = null;
    opened++;
    renderSlides();
    renderControls();
    renderLegend();
    renderSlideInfo();
    viewer.open({ tileSource: tileSource(slide, 'image') });
    history.replaceState(null, '', `#slide=${slide.id}`);
  }

  /* ---------- viewer ---------- */

  function imageItem() {
    return layers.image || (viewer.world.getItemCount() ? viewer.world.getItemAt(0) : null);
  }

  /** Screen (CSS) pixels per level-0 pixel. */
  function imageZoom() {
    const item = imageItem();
    return item ? item.viewportToImageZoom(viewer.viewport.getZoom(true)) : 1;
  }

  function updateScale() {
    const s = state.slide;
    if (!s || !imageItem()) return;
    const zoom = imageZoom();
    const mpp = s.mpp ? (s.mpp.x + s.mpp.y) / 2 : null;
    const unitPerScreenPx = mpp ? mpp / zoom : 1 / zoom;
    const target = 120 * unitPerScreenPx;
    const p = 10 ** Math.floor(Math.log10(target));
    const nice = [5, 2, 1].map((m) => m * p).find((v) => v <= target) || p;
    const px = nice / unitPerScreenPx;
    $('scalebar-bar').style.width = `${px}px`;
    $('scalebar-label').textContent = mpp
      ? nice >= 1000
        ? `${fmt(nice / 1000, nice >= 10000 ? 0 : 1)} mm`
        : `${fmt(nice, nice < 1 ? 2 : 0)} µm`
      : `${fmt(nice)} px`;
    const mag = mpp ? ` · ${fmt(10 / (mpp / zoom), 1)}x` : '';
    $('zoom-info').textContent = `${fmt(zoom * 100, zoom < 0.1 ? 1 : 0)}%${mag}`;
  }

  let pixelTimer = null;
  let pixelPending = null;
  function showCursor(point) {
    pixelPending = point;
    if (pixelTimer) return;
    pixelTimer = setTimeout(async () => {
      pixelTimer = null;
      const p = pixelPending;
      const s = state.slide;
      if (!p || !s) return;
      if (p.x < 0 || p.y < 0 || p.x >= s.width || p.y >= s.height) {
        $('cursor').textContent = `x ${p.x}, y ${p.y} (outside the slide)`;
        return;
      }
      try {
        const r = await fetch(`/api/slides/${s.id}/pixel?x=${p.x}&y=${p.y}`);
        if (!r.ok) return;
        renderCursor(await r.json());
      } catch {
        /* the server stopped */
      }
    }, 60);
  }

  function renderCursor(info) {
    const el = $('cursor');
    el.textContent = '';
    const line = (k, v) => {
      const div = document.createElement('div');
      const key = document.createElement('span');
      key.className = 'k';
      key.textContent = `${k}: `;
      div.append(key, document.createTextNode(v));
      el.appendChild(div);
    };
    line('x, y (level 0)', `${fmt(info.x)}, ${fmt(info.y)}`);
    line(info.rgb.length === 1 ? 'grey' : 'RGB', info.rgb.join(', '));
    const pred = state.layer === 'live' && info.live ? info.live : info.label;
    if (pred)
      line('class', pred.name === null ? `value ${pred.value} (not a class)` : `${pred.name} (value ${pred.value})`);
    else if (state.layer === 'live') line('class', 'not predicted yet');
    const probs = state.layer === 'live' && info.live ? info.live.probabilities : info.probabilities;
    if (probs) line('probability', probs.map((q) => `${q.name} ${q.p.toFixed(2)}`).join(', '));
  }

  /* ---------- live prediction ---------- */

  let liveTimer = null;
  let livePoll = null;
  function requestLive() {
    const s = state.slide;
    if (!s || !s.layers.live || state.layer !== 'live') return;
    clearTimeout(liveTimer);
    liveTimer = setTimeout(async () => {
      const item = imageItem();
      if (!item) return;
      const rect = item.viewportToImageRectangle(viewer.viewport.getBounds(true));
      const body = JSON.stringify({ x: rect.x, y: rect.y, width: rect.width, height: rect.height });
      const r = await fetch(`/api/slides/${s.id}/predict`, { method: 'POST', body });
      const answer = await r.json();
      if (!r.ok) {
        $('live-status').textContent = answer.error;
        return;
      }
      if (answer.status === 'too-large') {
        $('live-status').textContent =
          `Zoom in to predict: the view covers ${answer.blocks} blocks of ${s.layers.live.blockSize} px, ` +
          `at most ${answer.limit} are predicted at once.`;
      }
      liveUpdate(answer);
      if (answer.pending > 0 && !livePoll) pollLive();
    }, 350);
  }

  function liveUpdate(status) {
    state.liveCounts = status.counts;
    if (status.generation !== state.liveGeneration) {
      state.liveGeneration = status.generation;
      refreshOverlay();
    }
    renderLegend();
    if (status.error) $('live-status').textContent = `Prediction failed: ${status.error}`;
    else if (status.pending > 0) {
      $('live-status').textContent = `predicting: ${status.pending} block(s) to go (${status.lastMs} ms each)`;
    } else if (!/^Zoom in/.test($('live-status').textContent)) {
      $('live-status').textContent = `${status.predicted} block(s) predicted`;
    }
  }

  function pollLive() {
    const s = state.slide;
    livePoll = setTimeout(async () => {
      livePoll = null;
      if (state.slide !== s) return;
      const r = await fetch(`/api/slides/${s.id}/live`);
      if (!r.ok) return;
      const status = await r.json();
      liveUpdate(status);
      if (status.pending > 0) pollLive();
    }, 500);
  }

  /* ---------- keyboard ---------- */

  function onKey(event) {
    const target = event.target;
    if (
      target &&
      /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName) &&
      target.type !== 'checkbox' &&
      target.type !== 'range' &&
      target.type !== 'radio'
    )
      return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    const index = state.slides.findIndex((s) => s === state.slide);
    if (key === 'o') {
      state.overlayOn = !state.overlayOn;
      applyOpacity();
    } else if (key === '[' || key === ']') {
      state.opacity = Math.min(1, Math.max(0, Math.round((state.opacity + (key === ']' ? 0.1 : -0.1)) * 10) / 10));
      state.overlayOn = true;
      applyOpacity();
    } else if (/^[1-9]$/.test(key)) {
      const classes = state.slide.classes.filter((c) => !c.background);
      const c = classes[Number(key) - 1];
      if (c) toggleClass(c.index);
    } else if (key === 'l' || key === 'L') {
      state.outlinesOn = !state.outlinesOn;
      $('outlines-on').checked = state.outlinesOn;
      refreshOverlay();
    } else if (key === 'v') {
      setOverlayLayer(state.layer === 'labels' ? 'live' : 'labels');
    } else if (key === 'n' || key === 'p') {
      const next = state.slides[(index + (key === 'n' ? 1 : state.slides.length - 1)) % state.slides.length];
      if (next && next !== state.slide) openSlide(next.id);
    } else if (key === 'm') {
      const nav = viewer.navigator && viewer.navigator.element;
      if (nav) nav.style.display = nav.style.display === 'none' ? '' : 'none';
    } else if (key === 'z') {
      const item = imageItem();
      if (item) viewer.viewport.zoomTo(item.imageToViewportZoom(1));
    } else if (key === '?' || key === 'h') {
      $('help').hidden = !$('help').hidden;
    } else if (key === 'Escape') {
      $('help').hidden = true;
    } else return;
    event.preventDefault();
  }

  /* ---------- start ---------- */

  async function start() {
    const r = await fetch('/api/slides');
    const list = await r.json();
    state.version = list.version;
    state.slides = list.slides;
    state.warnings = list.warnings;
    viewer = OpenSeadragon({
      element: $('viewer'),
      prefixUrl: '/vendor/openseadragon/images/',
      showNavigator: true,
      navigatorPosition: 'TOP_RIGHT',
      showRotationControl: true,
      showFlipControl: true,
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.2,
      imageSmoothingEnabled: false,
      drawer: 'canvas',
      timeout: 60000,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    viewer.addHandler('open', () => {
      layers.image = viewer.world.getItemAt(0);
      refreshOverlay();
      updateScale();
      requestLive();
    });
    viewer.addHandler('animation', updateScale);
    viewer.addHandler('resize', updateScale);
    viewer.addHandler('animation-finish', requestLive);
    new OpenSeadragon.MouseTracker({
      element: viewer.canvas,
      moveHandler: (event) => {
        const item = imageItem();
        if (!item) return;
        const p = item.viewerElementToImageCoordinates(event.position);
        showCursor({ x: Math.floor(p.x), y: Math.floor(p.y) });
      },
    });
    $('opacity').addEventListener('input', () => {
      state.opacity = Number($('opacity').value) / 100;
      state.overlayOn = true;
      applyOpacity();
    });
    $('overlay-on').addEventListener('change', () => {
      state.overlayOn = $('overlay-on').checked;
      applyOpacity();
    });
    $('outlines-on').addEventListener('change', () => {
      state.outlinesOn = $('outlines-on').checked;
      refreshOverlay();
    });
    $('layer-labels').addEventListener('change', () => setOverlayLayer('labels'));
    $('layer-live').addEventListener('change', () => setOverlayLayer('live'));
    $('help-button').addEventListener('click', () => ($('help').hidden = !$('help').hidden));
    document.addEventListener('keydown', onKey);
    const wanted = /slide=([^&]+)/.exec(location.hash);
    await openSlide(wanted && state.slides.some((s) => s.id === wanted[1]) ? wanted[1] : state.slides[0].id);
    applyOpacity();
  }

  /** For tests and the console: the viewer, the state, and whether every layer's tiles in view are drawn. */
  window.tessera = {
    get viewer() {
      return viewer;
    },
    state,
    layers,
    loaded() {
      if (!viewer || changing > 0 || !layers.image) return false;
      for (let i = 0; i < viewer.world.getItemCount(); i++) {
        if (!viewer.world.getItemAt(i).getFullyLoaded()) return false;
      }
      return true;
    },
    openSlide,
    toggleClass,
  };

  start().catch((error) => {
    document.body.textContent = `The viewer could not start: ${error.message}`;
  });
})();
