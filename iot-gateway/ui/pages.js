// The dashboard's pages. Each renders into `view` and returns a cleanup (closing its streams).
import { api, queryAll, login, el, ApiError } from './api.js';
import { openStream } from './sse.js';
import { LiveChart } from './chart.js';
import { deviceMap } from './map.js';

const problem = (e) => el('div', { class: 'error', 'data-status': e instanceof ApiError ? String(e.status) : '' }, e instanceof ApiError ? e.display : String(e));
const badge = (text) => el('span', { class: `badge ${text || ''}` }, text || '—');
const deviceLink = (id) => el('a', { href: `#/device/${encodeURIComponent(id)}` }, id);

export function loginPage(view, onDone) {
  const out = el('div');
  const user = el('input', { id: 'login-user', name: 'user', autocomplete: 'username', required: true });
  const password = el('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = el('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      out.replaceChildren();
      try {
        await login(user.value, password.value);
        password.value = '';
        onDone();
      } catch (e) { out.append(problem(e)); }
    },
  }, el('label', {}, 'User', user), el('label', {}, 'Password', password), el('button', { type: 'submit', id: 'login-submit' }, 'Log in'));
  view.replaceChildren(el('section', { class: 'card login' }, el('h1', {}, 'Log in'), form, out));
}

export async function overviewPage(view) {
  view.replaceChildren(el('h1', {}, 'Fleet overview'), el('p', { class: 'muted' }, 'Loading…'));
  const twins = await queryAll('SELECT * FROM devices');
  const count = (f) => twins.reduce((m, t) => { const k = f(t) || 'unknown'; m[k] = (m[k] || 0) + 1; return m; }, {});
  const byStatus = count((t) => t.status);
  const byConnection = count((t) => t.connectionState);
  const tile = (n, l, id) => el('div', { class: 'tile', id }, el('div', { class: 'n' }, String(n)), el('div', { class: 'l' }, l));
  const alertsTile = tile(0, 'alerts in the last hour', 'tile-alerts');
  const alertsN = alertsTile.querySelector('.n');
  const recent = [];
  const recentList = el('ul', { class: 'feed' });
  const status = el('p', { class: 'muted' });
  view.replaceChildren(
    el('h1', {}, 'Fleet overview'),
    el('div', { class: 'tiles' },
      tile(twins.length, 'devices', 'tile-devices'),
      ...Object.entries(byStatus).map(([k, n]) => tile(n, k, `tile-status-${k}`)),
      ...Object.entries(byConnection).map(([k, n]) => tile(n, k.toLowerCase(), `tile-conn-${k}`)),
      alertsTile),
    el('h2', {}, 'Latest alerts'), status, recentList,
    el('h2', {}, 'Devices'), deviceTable(twins));
  const hour = () => Date.now() - 3600_000;
  const stream = openStream('/alerts/stream?sinceSeconds=3600', (_, a) => {
    recent.push(a);
    const n = recent.filter((x) => x.enqueuedTimeMs >= hour()).length;
    alertsN.textContent = String(n);
    recentList.prepend(alertLine(a));
    while (recentList.children.length > 10) recentList.lastChild.remove();
  }, (s) => { status.textContent = s.state === 'error' ? `alerts feed: ${s.status === 403 ? 'Forbidden: ' : ''}${s.message}` : ''; });
  return () => stream.close();
}

function alertLine(a) {
  return el('li', { class: 'alert' }, el('strong', {}, new Date(a.enqueuedTimeMs).toLocaleTimeString()), ' ', deviceLink(a.deviceId), ' ',
    el('code', {}, typeof a.body === 'string' ? a.body : JSON.stringify(a.body)));
}

function deviceTable(twins) {
  return el('table', { id: 'device-table' },
    el('thead', {}, el('tr', {}, ['device', 'status', 'connection', 'last activity', 'tags'].map((h) => el('th', {}, h)))),
    el('tbody', {}, twins.map((t) => el('tr', { 'data-device': t.deviceId },
      el('td', {}, deviceLink(t.deviceId)), el('td', {}, badge(t.status)), el('td', {}, badge(t.connectionState)),
      el('td', {}, t.lastActivityTime && !t.lastActivityTime.startsWith('0001') ? new Date(t.lastActivityTime).toLocaleString() : '—'),
      el('td', {}, el('code', {}, JSON.stringify(t.tags || {})))))));
}

export async function mapPage(view) {
  view.replaceChildren(el('h1', {}, 'Device map'), el('p', { class: 'muted' }, 'Loading…'));
  // "Near": the registry's geo query (WITHIN_DISTANCE over tags.location, answered from its
  // position indexes, docs/registry.md) picks the devices drawn; empty fields draw them all.
  const lat = el('input', { id: 'near-lat', type: 'number', step: 'any', placeholder: '47.62' });
  const lon = el('input', { id: 'near-lon', type: 'number', step: 'any', placeholder: '-122.35' });
  const km = el('input', { id: 'near-km', type: 'number', step: 'any', min: '0', placeholder: '5' });
  const holder = el('div');
  const draw = async () => {
    const near = [lat.value, lon.value, km.value].every((v) => v !== '');
    const query = near
      ? `SELECT * FROM devices WHERE WITHIN_DISTANCE(tags.location, ${Number(lat.value)}, ${Number(lon.value)}, ${Number(km.value) * 1000})`
      : 'SELECT * FROM devices';
    try {
      holder.replaceChildren(el('p', { class: 'muted', id: 'map-query' }, query), deviceMap(await queryAll(query)));
    } catch (e) { holder.replaceChildren(problem(e)); }
  };
  const form = el('form', { id: 'near-form', onsubmit: (ev) => { ev.preventDefault(); draw(); } },
    el('label', {}, 'Latitude', lat), el('label', {}, 'Longitude', lon), el('label', {}, 'Within km', km),
    el('button', { type: 'submit', id: 'near-apply' }, 'Show'));
  view.replaceChildren(el('h1', {}, 'Device map'),
    el('p', { class: 'muted' }, 'Positions from tags.location (registry metadata) or reported location, {lat, lon}. Green: connected.'),
    form, holder);
  await draw();
}

export async function devicesPage(view, params) {
  const initial = params.get('q') || 'SELECT * FROM devices';
  const q = el('input', { id: 'query', class: 'wide', value: initial });
  const out = el('div');
  const form = el('form', { onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/devices?q=${encodeURIComponent(q.value)}`; } },
    el('label', {}, 'Registry query', q), el('button', { type: 'submit' }, 'Run'));
  view.replaceChildren(el('h1', {}, 'Devices'), form,
    el('p', { class: 'muted' }, "e.g. SELECT * FROM devices WHERE tags.site = 'plant-2' or WITHIN_DISTANCE(tags.location, 47.62, -122.35, 5000)"), out);
  try {
    const twins = await queryAll(initial);
    out.replaceChildren(el('p', {}, `${twins.length} device(s)`), deviceTable(twins.filter((t) => t && t.deviceId)));
  } catch (e) { out.replaceChildren(problem(e)); }
}

export async function devicePage(view, id) {
  const result = (id2) => el('div', { id: id2 });
  const twinBox = el('pre', { id: 'twin' }, 'Loading…');
  const lkv = el('table', { id: 'last-values' });
  const lkvData = new Map();
  const chart = new LiveChart();
  chart.node.id = 'chart';
  const streamState = el('p', { class: 'muted', id: 'stream-state' });
  const methodName = el('input', { id: 'method-name', value: 'reboot' });
  const methodPayload = el('textarea', { id: 'method-payload', rows: 2, cols: 30 }, '{}');
  const methodTimeout = el('input', { id: 'method-timeout', type: 'number', value: '10', min: '5', max: '300' });
  const methodOut = result('method-result');
  const c2dBody = el('textarea', { id: 'c2d-body', rows: 2, cols: 30 }, '{"command":"hello"}');
  const c2dOut = result('c2d-result');

  const invoke = async (ev) => {
    ev.preventDefault();
    methodOut.replaceChildren(el('p', { class: 'muted' }, 'Waiting for the device…'));
    try {
      const payload = methodPayload.value.trim() ? JSON.parse(methodPayload.value) : null;
      const answer = await api('POST', `/twins/${encodeURIComponent(id)}/methods`, { methodName: methodName.value, payload, responseTimeoutInSeconds: Number(methodTimeout.value) });
      methodOut.replaceChildren(el('div', { class: 'ok' }, `status ${answer.status}`), el('pre', { id: 'method-answer' }, JSON.stringify(answer.payload, null, 2)));
    } catch (e) { methodOut.replaceChildren(problem(e)); }
  };
  const sendC2d = async (ev) => {
    ev.preventDefault();
    try {
      const answer = await api('POST', `/devices/${encodeURIComponent(id)}/messages/cloudToDevice`, c2dBody.value, { 'Content-Type': 'application/json', 'iothub-ack': 'full' });
      c2dOut.replaceChildren(el('div', { class: 'ok' }, `queued, message id ${answer.messageId}`));
    } catch (e) { c2dOut.replaceChildren(problem(e)); }
  };

  view.replaceChildren(
    el('h1', {}, 'Device ', el('span', { id: 'device-id' }, id)),
    el('section', { class: 'card' }, el('h2', {}, 'Live telemetry'), streamState, chart.node),
    el('div', { class: 'cols' },
      el('section', { class: 'card' }, el('h2', {}, 'Last known values'), lkv),
      el('section', { class: 'card' }, el('h2', {}, 'Twin'), twinBox)),
    el('div', { class: 'cols' },
      el('section', { class: 'card' }, el('h2', {}, 'Invoke a direct method'),
        el('form', { onsubmit: invoke }, el('label', {}, 'Method', methodName), el('label', {}, 'Payload (JSON)', methodPayload),
          el('label', {}, 'Timeout (s)', methodTimeout), el('button', { type: 'submit', id: 'invoke' }, 'Invoke')), methodOut),
      el('section', { class: 'card' }, el('h2', {}, 'Send a cloud-to-device message'),
        el('form', { onsubmit: sendC2d }, el('label', {}, 'Body', c2dBody), el('button', { type: 'submit', id: 'send-c2d' }, 'Send')), c2dOut)));

  api('GET', `/twins/${encodeURIComponent(id)}`)
    .then((twin) => { twinBox.textContent = JSON.stringify(twin, null, 2); })
    .catch((e) => twinBox.replaceChildren(problem(e)));

  const drawLkv = () => {
    lkv.replaceChildren(el('tr', {}, el('th', {}, 'field'), el('th', {}, 'value'), el('th', {}, 'at')),
      ...[...lkvData].map(([k, [v, t]]) => el('tr', { 'data-field': k }, el('td', {}, k), el('td', {}, typeof v === 'object' ? JSON.stringify(v) : String(v)), el('td', {}, new Date(t).toLocaleTimeString()))));
  };
  drawLkv();
  const stream = openStream(`/devices/${encodeURIComponent(id)}/telemetry/stream`, (_, rec) => {
    const t = rec.deviceTimeMs || rec.enqueuedTimeMs;
    chart.add(t, rec.body);
    if (rec.body && typeof rec.body === 'object') for (const [k, v] of Object.entries(rec.body)) lkvData.set(k, [v, t]);
    else lkvData.set('(body)', [rec.body, t]);
    drawLkv();
  }, (s) => {
    streamState.textContent = s.state === 'open' ? 'live: connected to the telemetry stream' : s.state === 'error' ? `stream: ${s.status === 403 ? 'Forbidden: ' : ''}${s.message}` : 'stream closed, reconnecting…';
    streamState.dataset.state = s.state;
  });
  return () => stream.close();
}

export function alertsPage(view) {
  const list = el('ul', { class: 'feed', id: 'alerts-feed' });
  const state = el('p', { class: 'muted' });
  view.replaceChildren(el('h1', {}, 'Alerts'),
    el('p', { class: 'muted' }, "Live from the hub's alerts topic (the rule 'overheat': temperature above 80). The last hour first, then as they are raised."),
    state, list);
  const stream = openStream('/alerts/stream?sinceSeconds=3600', (_, a) => list.prepend(alertLine(a)),
    (s) => { state.textContent = s.state === 'open' ? 'live' : s.state === 'error' ? `${s.status === 403 ? 'Forbidden: ' : ''}${s.message}` : 'reconnecting…'; });
  return () => stream.close();
}

function randomKey() {
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  return btoa(String.fromCharCode(...bytes));
}

export function provisionPage(view, me) {
  const hub = (me && me.hub) || 'localhost';
  const out = el('div', { id: 'provision-result' });
  const showKey = (device, what) => {
    const key = device.authentication && device.authentication.symmetricKey && device.authentication.symmetricKey.primaryKey;
    const cs = `HostName=${hub};DeviceId=${device.deviceId};SharedAccessKey=${key}`;
    out.replaceChildren(el('div', { class: 'ok' }, `${what}: ${device.deviceId} (${device.status})`),
      el('p', {}, 'The connection string, shown this once (the key is not shown again; reset it if lost):'),
      el('div', { class: 'secret', id: 'connection-string' }, cs));
  };
  const run = async (fn) => { out.replaceChildren(); try { await fn(); } catch (e) { out.replaceChildren(problem(e)); } };
  const newId = el('input', { id: 'new-device-id', required: true, pattern: '[A-Za-z0-9._:%+=@$!*\\x27()#,;-]{1,128}' });
  const lat = el('input', { id: 'new-device-lat', type: 'number', step: 'any', placeholder: 'optional' });
  const lon = el('input', { id: 'new-device-lon', type: 'number', step: 'any', placeholder: 'optional' });
  const register = el('form', { id: 'register-form', onsubmit: (ev) => { ev.preventDefault(); run(async () => {
    const id = newId.value.trim();
    const device = await api('PUT', `/devices/${encodeURIComponent(id)}`, { deviceId: id });
    if (lat.value !== '' && lon.value !== '') {
      await api('PATCH', `/twins/${encodeURIComponent(id)}`, { tags: { location: { lat: Number(lat.value), lon: Number(lon.value) } } }, { 'If-Match': '*' });
    }
    showKey(device, 'Registered');
  }); } }, el('label', {}, 'Device id', newId), el('label', {}, 'Latitude', lat), el('label', {}, 'Longitude', lon), el('button', { type: 'submit', id: 'register' }, 'Register'));

  const target = el('input', { id: 'target-device-id', required: true });
  const put = (body) => api('PUT', `/devices/${encodeURIComponent(target.value.trim())}`, { deviceId: target.value.trim(), ...body }, { 'If-Match': '*' });
  const manage = el('form', { onsubmit: (ev) => ev.preventDefault() }, el('label', {}, 'Device id', target),
    el('button', { type: 'button', id: 'deactivate', class: 'danger', onclick: () => run(async () => { const d = await put({ status: 'disabled' }); out.replaceChildren(el('div', { class: 'ok' }, `${d.deviceId} is ${d.status}`)); }) }, 'Deactivate'),
    el('button', { type: 'button', id: 'activate', class: 'secondary', onclick: () => run(async () => { const d = await put({ status: 'enabled' }); out.replaceChildren(el('div', { class: 'ok' }, `${d.deviceId} is ${d.status}`)); }) }, 'Activate'),
    el('button', { type: 'button', id: 'reset-keys', class: 'secondary', onclick: () => run(async () => {
      const d = await put({ authentication: { type: 'sas', symmetricKey: { primaryKey: randomKey(), secondaryKey: randomKey() } } });
      showKey(d, 'Keys reset');
    }) }, 'Reset keys'));
  view.replaceChildren(el('h1', {}, 'Provisioning'),
    el('section', { class: 'card' }, el('h2', {}, 'Register a device'), register),
    el('section', { class: 'card' }, el('h2', {}, 'Deactivate, activate, reset keys'), manage),
    out);
}
