// The device map: registry positions drawn in SVG with an equirectangular projection fitted to
// the devices, a graticule for reference, no tiles and nothing fetched from elsewhere.
import { svg, positionOf } from './api.js';

export function deviceMap(twins, width = 900, height = 480) {
  const placed = twins.map((t) => ({ twin: t, p: positionOf(t) })).filter((d) => d.p);
  const node = svg('svg', { class: 'map', viewBox: `0 0 ${width} ${height}`, 'data-devices': String(placed.length), role: 'img', 'aria-label': 'device map' });
  if (!placed.length) {
    node.append(svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'axis' }, 'no device has a position (tags.location {lat, lon})'));
    return node;
  }
  let s = Math.min(...placed.map((d) => d.p.lat)); let n = Math.max(...placed.map((d) => d.p.lat));
  let w = Math.min(...placed.map((d) => d.p.lon)); let e = Math.max(...placed.map((d) => d.p.lon));
  // At least ~1 km around, and a margin of a tenth on each side.
  const minSpan = 0.01;
  if (n - s < minSpan) { const c = (n + s) / 2; s = c - minSpan / 2; n = c + minSpan / 2; }
  if (e - w < minSpan) { const c = (e + w) / 2; w = c - minSpan / 2; e = c + minSpan / 2; }
  const mLat = (n - s) * 0.1; const mLon = (e - w) * 0.1;
  s -= mLat; n += mLat; w -= mLon; e += mLon;
  // Equirectangular, with longitude scaled by cos(mid-latitude) so shapes keep their aspect.
  const k = Math.cos((((s + n) / 2) * Math.PI) / 180);
  const spanX = (e - w) * k; const spanY = n - s;
  const scale = Math.min((width - 40) / spanX, (height - 40) / spanY);
  const ox = (width - spanX * scale) / 2; const oy = (height - spanY * scale) / 2;
  const px = (lon) => ox + (lon - w) * k * scale;
  const py = (lat) => oy + (n - lat) * scale;
  const step = niceStep(Math.max(n - s, e - w) / 5);
  for (let lat = Math.ceil(s / step) * step; lat <= n; lat += step) {
    node.append(svg('line', { class: 'grid', x1: px(w), x2: px(e), y1: py(lat), y2: py(lat) }));
    node.append(svg('text', { class: 'axis', x: px(w) + 2, y: py(lat) - 2 }, `${lat.toFixed(3)}°`));
  }
  for (let lon = Math.ceil(w / step) * step; lon <= e; lon += step) {
    node.append(svg('line', { class: 'grid', x1: px(lon), x2: px(lon), y1: py(n), y2: py(s) }));
    node.append(svg('text', { class: 'axis', x: px(lon) + 2, y: py(s) - 2 }, `${lon.toFixed(3)}°`));
  }
  for (const { twin, p } of placed) {
    const link = svg('a', { href: `#/device/${encodeURIComponent(twin.deviceId)}` },
      svg('circle', { class: `dot ${twin.connectionState || ''}`, cx: px(p.lon), cy: py(p.lat), r: 7 },
        svg('title', {}, `${twin.deviceId} (${p.lat}, ${p.lon}) ${twin.connectionState || ''}`)),
      svg('text', { class: 'label', x: px(p.lon) + 9, y: py(p.lat) + 4 }, twin.deviceId));
    node.append(link);
  }
  return node;
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
