// Fleet operations (docs/fleet.md): jobs (a direct method over the devices a query matches, with
// per-device statistics and cancel) and automatic device configurations (desired properties
// over a target condition, with how many devices are targeted and have applied them). The
// routes are checked on the hub: a user without a grant over all devices sees the refusal.
import { api, el, ApiError } from './api.js';

const problem = (e) => el('div', { class: 'error' }, e instanceof ApiError ? e.display : String(e));
const freshId = (prefix) => `${prefix}-${Date.now().toString(36)}`;

function statistics(s) {
  if (!s) return '—';
  return `${s.deviceCount} devices: ${s.succeededCount} succeeded, ${s.failedCount} failed, ${s.runningCount} running, ${s.pendingCount} pending`;
}

// The job's start: now, or the local time picked (sent as UTC, as IoT Hub takes it).
const startTime = (input) => (input.value ? new Date(input.value) : new Date()).toISOString();

const parseJson = (input, what) => {
  try { return JSON.parse(input.value || 'null'); } catch { throw new Error(`${what} is not JSON`); }
};

export async function jobsPage(view) {
  const out = el('div', { id: 'jobs-result' });
  const list = el('div');
  const condition = el('input', { id: 'job-condition', required: true, value: "deviceId = 'sensor-1'", size: '40' });
  const start = el('input', { id: 'job-start', type: 'datetime-local' });
  const method = el('input', { id: 'job-method', required: true, value: 'reboot' });
  const payload = el('input', { id: 'job-payload', value: '{}' });
  const twinCondition = el('input', { id: 'twin-job-condition', required: true, value: "deviceId = 'sensor-1'", size: '40' });
  const twinStart = el('input', { id: 'twin-job-start', type: 'datetime-local' });
  const desired = el('input', { id: 'twin-job-desired', value: '{"mode": "eco"}', size: '30' });
  const tags = el('input', { id: 'twin-job-tags', value: '', size: '30', placeholder: '{"floor": 3}' });
  const refresh = async () => {
    try {
      const answer = await api('GET', '/jobs/v2/query');
      const jobs = Array.isArray(answer) ? answer : (answer.items || []);
      list.replaceChildren(el('table', { id: 'jobs-table' },
        el('tr', {}, el('th', {}, 'job'), el('th', {}, 'type'), el('th', {}, 'query'), el('th', {}, 'status'), el('th', {}, 'statistics'), el('th', {})),
        jobs.map((j) => el('tr', { 'data-job': j.jobId, 'data-type': j.type }, el('td', {}, j.jobId), el('td', {}, j.type),
          el('td', {}, j.queryCondition), el('td', { class: 'job-status' }, j.status),
          el('td', { class: 'job-statistics' }, statistics(j.deviceJobStatistics)),
          el('td', {}, ['queued', 'scheduled', 'running'].includes(j.status)
            ? el('button', { type: 'button', class: 'danger', onclick: () => act(() => api('POST', `/jobs/v2/${encodeURIComponent(j.jobId)}/cancel`)) }, 'Cancel')
            : '')))));
    } catch (e) { list.replaceChildren(problem(e)); }
  };
  const act = async (fn) => { out.replaceChildren(); try { await fn(); } catch (e) { out.append(problem(e)); } await refresh(); };
  const methodForm = el('form', { id: 'new-job-form', onsubmit: (ev) => { ev.preventDefault(); act(async () => {
    const body = parseJson(payload, 'the payload');
    const jobId = freshId('method');
    await api('PUT', `/jobs/v2/${jobId}`, {
      jobId, type: 'scheduleDeviceMethod', queryCondition: condition.value.trim(), startTime: startTime(start),
      cloudToDeviceMethod: { methodName: method.value.trim(), payload: body, responseTimeoutInSeconds: 10 },
      maxExecutionTimeInSeconds: 300,
    });
    out.append(el('div', { class: 'ok' }, `created ${jobId}`));
  }); } }, el('label', {}, 'Devices where', condition), el('label', {}, 'Method', method), el('label', {}, 'Payload (JSON)', payload),
  el('label', {}, 'Start (empty: now)', start),
  el('button', { type: 'submit', id: 'create-job' }, 'Invoke on matching devices'));
  const twinForm = el('form', { id: 'new-twin-job-form', onsubmit: (ev) => { ev.preventDefault(); act(async () => {
    const updateTwin = { etag: '*' };
    const patch = parseJson(desired, 'the desired properties');
    if (patch) updateTwin.properties = { desired: patch };
    const tagPatch = parseJson(tags, 'the tags');
    if (tagPatch) updateTwin.tags = tagPatch;
    if (!patch && !tagPatch) throw new Error('give desired properties, tags or both');
    const jobId = freshId('twin');
    await api('PUT', `/jobs/v2/${jobId}`, {
      jobId, type: 'scheduleUpdateTwin', queryCondition: twinCondition.value.trim(), startTime: startTime(twinStart),
      updateTwin, maxExecutionTimeInSeconds: 300,
    });
    out.append(el('div', { class: 'ok' }, `created ${jobId}`));
  }); } }, el('label', {}, 'Devices where', twinCondition), el('label', {}, 'Desired properties (JSON)', desired),
  el('label', {}, 'Tags (JSON, optional)', tags), el('label', {}, 'Start (empty: now)', twinStart),
  el('button', { type: 'submit', id: 'create-twin-job' }, 'Update matching twins'));
  view.replaceChildren(el('h1', {}, 'Jobs'),
    el('section', { class: 'card' }, el('h2', {}, 'New method job'), methodForm),
    el('section', { class: 'card' }, el('h2', {}, 'New twin update job'), twinForm), out, list);
  await refresh();
  // Jobs move on their own: refresh the table while the page is open.
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}

export async function configurationsPage(view) {
  const out = el('div', { id: 'configurations-result' });
  const list = el('div');
  const condition = el('input', { id: 'configuration-condition', required: true, value: "deviceId = 'sensor-1'", size: '40' });
  const priority = el('input', { id: 'configuration-priority', type: 'number', value: '10' });
  const desired = el('input', { id: 'configuration-desired', required: true, value: '{"telemetryInterval": 5}', size: '30' });
  const refresh = async () => {
    try {
      const configurations = await api('GET', '/configurations');
      list.replaceChildren(el('table', { id: 'configurations-table' },
        el('tr', {}, el('th', {}, 'configuration'), el('th', {}, 'target'), el('th', {}, 'priority'), el('th', {}, 'targeted'), el('th', {}, 'applied'), el('th', {})),
        configurations.map((c) => {
          const r = (c.systemMetrics && c.systemMetrics.results) || {};
          return el('tr', { 'data-configuration': c.id }, el('td', {}, c.id), el('td', {}, c.targetCondition),
            el('td', {}, String(c.priority)), el('td', { class: 'targeted' }, String(r.targetedCount ?? '—')),
            el('td', { class: 'applied' }, String(r.appliedCount ?? '—')),
            el('td', {}, el('button', { type: 'button', class: 'danger delete-configuration',
              onclick: () => act(() => api('DELETE', `/configurations/${encodeURIComponent(c.id)}`, undefined, { 'If-Match': '*' })) }, 'Delete')));
        })));
    } catch (e) { list.replaceChildren(problem(e)); }
  };
  const act = async (fn) => { out.replaceChildren(); try { await fn(); } catch (e) { out.append(problem(e)); } await refresh(); };
  const form = el('form', { id: 'new-configuration-form', onsubmit: (ev) => { ev.preventDefault(); act(async () => {
    const properties = parseJson(desired, 'the desired properties');
    const id = freshId('config');
    const deviceContent = {};
    for (const [k, v] of Object.entries(properties)) deviceContent[`properties.desired.${k}`] = v;
    await api('PUT', `/configurations/${id}`, {
      id, content: { deviceContent }, targetCondition: condition.value.trim(),
      priority: Number(priority.value) || 0, labels: {},
    });
    out.append(el('div', { class: 'ok' }, `created ${id}`));
  }); } }, el('label', {}, 'Devices where', condition), el('label', {}, 'Priority', priority), el('label', {}, 'Desired properties (JSON)', desired),
  el('button', { type: 'submit', id: 'create-configuration' }, 'Create configuration'));
  view.replaceChildren(el('h1', {}, 'Configurations'), el('section', { class: 'card' }, el('h2', {}, 'New configuration'), form), out, list);
  await refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}
