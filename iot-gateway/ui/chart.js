// A live line chart in SVG: one line per numeric field of the telemetry body, the last
// `keep` points of each, redrawn as points arrive.
import { svg } from './api.js';

const COLORS = ['#1f6feb', '#d92d20', '#079455', '#dc6803', '#7a5af8', '#0e9384'];

export class LiveChart {
  constructor(width = 800, height = 260, keep = 120) {
    this.width = width; this.height = height; this.keep = keep;
    this.series = new Map();
    this.points = 0;
    this.node = svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, 'data-points': '0', role: 'img', 'aria-label': 'live telemetry chart' });
    this.draw();
  }

  // Adds the numeric members (top level, one level deep) of `body` at time `t` (ms).
  add(t, body) {
    if (!body || typeof body !== 'object') return;
    const flat = [];
    for (const [k, v] of Object.entries(body)) {
      if (typeof v === 'number' && Number.isFinite(v)) flat.push([k, v]);
      else if (v && typeof v === 'object' && !Array.isArray(v)) {
        for (const [k2, v2] of Object.entries(v)) if (typeof v2 === 'number' && Number.isFinite(v2)) flat.push([`${k}.${k2}`, v2]);
      }
    }
    if (!flat.length) return;
    for (const [name, value] of flat) {
      if (!this.series.has(name)) this.series.set(name, []);
      const s = this.series.get(name);
      s.push([t, value]);
      if (s.length > this.keep) s.shift();
    }
    this.points += 1;
    this.draw();
  }

  draw() {
    const { width: w, height: h } = this;
    const pad = { l: 48, r: 12, t: 12, b: 24 };
    const all = [...this.series.values()].flat();
    const node = this.node;
    node.replaceChildren();
    node.setAttribute('data-points', String(this.points));
    if (!all.length) {
      node.append(svg('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'axis' }, 'waiting for telemetry…'));
      return;
    }
    let t0 = Math.min(...all.map((p) => p[0])); let t1 = Math.max(...all.map((p) => p[0]));
    let v0 = Math.min(...all.map((p) => p[1])); let v1 = Math.max(...all.map((p) => p[1]));
    if (t1 === t0) { t0 -= 1000; t1 += 1000; }
    if (v1 === v0) { v0 -= 1; v1 += 1; }
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
    const y = (v) => h - pad.b - ((v - v0) / (v1 - v0)) * (h - pad.t - pad.b);
    for (let i = 0; i <= 4; i += 1) {
      const v = v0 + ((v1 - v0) * i) / 4;
      node.append(svg('line', { class: 'grid', x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v) }));
      node.append(svg('text', { class: 'axis', x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, v.toFixed(1)));
    }
    node.append(svg('text', { class: 'axis', x: pad.l, y: h - 6 }, new Date(t0).toLocaleTimeString()));
    node.append(svg('text', { class: 'axis', x: w - pad.r, y: h - 6, 'text-anchor': 'end' }, new Date(t1).toLocaleTimeString()));
    let i = 0;
    for (const [name, points] of this.series) {
      const color = COLORS[i % COLORS.length];
      node.append(svg('polyline', { class: 'line', stroke: color, points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ') }));
      for (const [t, v] of points.slice(-1)) node.append(svg('circle', { cx: x(t), cy: y(v), r: 3, fill: color }));
      node.append(svg('text', { class: 'legend', x: pad.l + 8 + i * 120, y: pad.t + 10, fill: color }, name));
      i += 1;
    }
  }
}
