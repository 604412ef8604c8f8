// The service REST API, called with the session's bearer token. The token lives in
// sessionStorage (gone when the tab closes), never in a URL or a cookie.
export const API_VERSION = '2021-04-12';
const TOKEN_KEY = 'iot.session';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
  // What to show a person: a 403 says plainly that the user may not do this.
  get display() {
    if (this.status === 403) return `Forbidden: ${this.message}`;
    if (this.status === 401) return `Not signed in: ${this.message}`;
    return `Error ${this.status}: ${this.message}`;
  }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
}

export function withVersion(path) {
  return path + (path.includes('?') ? '&' : '?') + 'api-version=' + API_VERSION;
}

// IoT Hub's error body is {"Message": "ErrorCode:Code;text", …}: keep the text.
function messageOf(data, fallback) {
  const text = data && typeof data === 'object' ? (data.Message || data.message) : null;
  if (typeof text !== 'string') return fallback;
  const semi = text.indexOf(';');
  return text.startsWith('ErrorCode:') && semi > 0 ? text.slice(semi + 1) : text;
}

export async function api(method, path, body, headers = {}) {
  const h = { Accept: 'application/json', ...headers };
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  let payload;
  if (body !== undefined) {
    if (typeof body === 'string') payload = body;
    else { payload = JSON.stringify(body); h['Content-Type'] = 'application/json'; }
  }
  const response = await fetch(withVersion(path), { method, headers: h, body: payload });
  const text = await response.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = text; } }
  if (!response.ok) throw new ApiError(response.status, messageOf(data, response.statusText));
  return data;
}

// Every page of a registry query (IoT Hub's x-ms-continuation paging).
export async function queryAll(query, limit = 5000) {
  const out = [];
  let continuation = null;
  do {
    const h = { Accept: 'application/json', 'Content-Type': 'application/json', 'x-ms-max-item-count': '1000' };
    const t = token();
    if (t) h.Authorization = 'Bearer ' + t;
    if (continuation) h['x-ms-continuation'] = continuation;
    const response = await fetch(withVersion('/devices/query'), { method: 'POST', headers: h, body: JSON.stringify({ query }) });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (!response.ok) throw new ApiError(response.status, messageOf(data, response.statusText));
    if (Array.isArray(data)) out.push(...data);
    continuation = response.headers.get('x-ms-continuation');
  } while (continuation && out.length < limit);
  return out;
}

export async function login(user, password) {
  const response = await fetch('/auth/login?api-version=' + API_VERSION, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user, password }),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw new ApiError(response.status, messageOf(data, response.statusText));
  setToken(data.token);
  return data;
}

export async function logout() {
  try { await api('POST', '/auth/logout'); } catch { /* the session may be gone already */ }
  setToken(null);
}

// A device's position, {lat, lon}, from its tags (registry metadata) or reported properties.
export function positionOf(twin) {
  const sources = [twin.tags, twin.properties && twin.properties.reported];
  for (const source of sources) {
    if (!source) continue;
    for (const key of ['location', 'position', 'geo']) {
      const p = source[key];
      if (p && typeof p.lat === 'number' && typeof p.lon === 'number') return { lat: p.lat, lon: p.lon };
    }
  }
  return null;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
