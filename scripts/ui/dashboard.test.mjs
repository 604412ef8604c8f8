// The dashboard, end to end, in Debian's chromium driven by playwright-core (run by
// scripts/ui/dashboard.sh, which starts the hub example with --ui and a simulated device).
//
// admin creates a viewer and an operator; the viewer sees the fleet and the map, opens the
// simulated device and watches its chart receive live points, and is refused a direct method
// (the 403 shown on the page); the operator invokes the method and sees the device's answer,
// and is refused registering a device; the admin registers one, a second simulated device
// connects with the connection string the page showed once, and its live points arrive; the
// alerts feed shows the overheat alerts; the admin deactivates, activates and resets the keys of
// the new device; the admin runs a method job over a query on the first device (completed, 1 succeeded) and
// creates a configuration that targets it. Screenshots go to $SCREENSHOTS.
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.resolve(process.env.PLAYWRIGHT_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const UI = process.env.UI_URL; // http://127.0.0.1:PORT/ui/
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD;
const DEVICE = process.env.DEVICE;
const SHOTS = process.env.SCREENSHOTS;
const MQTT_PORT = process.env.MQTT_PORT;
const PYTHON = process.env.PYTHON;
const T = 30_000;
mkdirSync(SHOTS, { recursive: true });

const step = (text) => console.log(`ui-test: ${text}`);
const children = [];

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  step(`screenshot ${name}.png`);
}

async function loginAs(browser, user, password) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => { console.error(`page error (${user}): ${e}`); process.exitCode = 1; });
  await page.goto(UI);
  await page.fill('#login-user', user);
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await page.waitForFunction((u) => document.getElementById('who').dataset.user === u, user, { timeout: T });
  step(`${user} logged in`);
  return { context, page };
}

async function pointsOf(page) {
  return Number(await page.getAttribute('#chart', 'data-points'));
}

// Waits until the chart got `n` more points than it had once its stream was open.
async function watchLivePoints(page, n) {
  await page.waitForSelector('#stream-state[data-state="open"]', { timeout: T });
  const before = await pointsOf(page);
  await page.waitForFunction(([b, k]) => Number(document.getElementById('chart').dataset.points) >= b + k, [before, n], { timeout: T });
  const after = await pointsOf(page);
  step(`chart went from ${before} to ${after} points while watched`);
}

async function createUser(page, name, password, role) {
  await page.fill('#new-user-name', name);
  await page.fill('#new-user-password', password);
  await page.selectOption('#new-user-role', role);
  await page.selectOption('#new-user-scope', 'all');
  await page.click('#create-user');
  await page.waitForSelector(`#users-table tr[data-user="${name}"]`, { timeout: T });
  step(`admin created ${role} ${name}`);
}

async function main() {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    // 1. The admin makes a viewer and an operator.
    const admin = await loginAs(browser, 'admin', ADMIN_PASSWORD);
    await admin.page.goto(`${UI}#/users`);
    await admin.page.waitForSelector('#new-user-form', { timeout: T });
    await createUser(admin.page, 'vera', 'vera-viewer-pw', 'viewer');
    await createUser(admin.page, 'olga', 'olga-operator-pw', 'operator');
    await shot(admin.page, '01-admin-users');

    // 2. The viewer: fleet, map, list, a device's live chart, a refused method.
    const viewer = await loginAs(browser, 'vera', 'vera-viewer-pw');
    const v = viewer.page;
    await v.waitForFunction(() => Number(document.querySelector('#tile-devices .n')?.textContent) >= 1, null, { timeout: T });
    await v.waitForSelector(`#device-table tr[data-device="${DEVICE}"]`, { timeout: T });
    await shot(v, '02-viewer-overview');
    await v.goto(`${UI}#/map`);
    await v.waitForFunction(() => Number(document.querySelector('svg.map')?.dataset.devices) >= 1, null, { timeout: T });
    await shot(v, '03-viewer-map');
    await v.goto(`${UI}#/devices?q=${encodeURIComponent(`SELECT * FROM devices WHERE deviceId = '${DEVICE}'`)}`);
    await v.waitForSelector(`#device-table tr[data-device="${DEVICE}"]`, { timeout: T });
    await v.click(`#device-table tr[data-device="${DEVICE}"] a`);
    await v.waitForSelector('#device-id', { timeout: T });
    await watchLivePoints(v, 3);
    await v.waitForSelector('#last-values tr[data-field="temperature"]', { timeout: T });
    await shot(v, '04-viewer-device-live');
    await v.click('#invoke');
    await v.waitForSelector('#method-result .error[data-status="403"]', { timeout: T });
    const refused = await v.textContent('#method-result .error');
    if (!refused.startsWith('Forbidden')) throw new Error(`the viewer's refusal reads ${refused}`);
    step(`viewer refused: ${refused}`);
    await shot(v, '05-viewer-method-forbidden');

    // 3. The operator invokes the method; the simulated device answers.
    const operator = await loginAs(browser, 'olga', 'olga-operator-pw');
    const o = operator.page;
    await o.goto(`${UI}#/device/${encodeURIComponent(DEVICE)}`);
    await o.waitForSelector('#device-id', { timeout: T });
    await o.fill('#method-name', 'reboot');
    await o.fill('#method-payload', '{"delay": 1}');
    await o.click('#invoke');
    await o.waitForSelector('#method-answer', { timeout: T });
    const answer = JSON.parse(await o.textContent('#method-answer'));
    if (answer.answeredBy !== DEVICE || answer.method !== 'reboot') throw new Error(`unexpected answer ${JSON.stringify(answer)}`);
    step(`operator got the answer ${JSON.stringify(answer)}`);
    await shot(o, '06-operator-method-answer');
    // An operator may not register devices.
    await o.goto(`${UI}#/provision`);
    await o.fill('#new-device-id', 'not-allowed');
    await o.click('#register');
    await o.waitForSelector('#provision-result .error[data-status="403"]', { timeout: T });
    step(`operator refused: ${await o.textContent('#provision-result .error')}`);

    // 4. The admin registers a device; it connects with the connection string shown once.
    const a = admin.page;
    await a.goto(`${UI}#/provision`);
    await a.fill('#new-device-id', 'sensor-new');
    await a.fill('#new-device-lat', '47.61');
    await a.fill('#new-device-lon', '-122.33');
    await a.click('#register');
    await a.waitForSelector('#connection-string', { timeout: T });
    const connectionString = (await a.textContent('#connection-string')).trim();
    if (!/^HostName=[^;]+;DeviceId=sensor-new;SharedAccessKey=.+=$/.test(connectionString)) throw new Error('no connection string shown');
    step('admin registered sensor-new; connection string shown');
    await shot(a, '07-admin-registered');
    const device = spawn(PYTHON, ['scripts/ui/sim_device.py', '--port', MQTT_PORT, '--connection-string', connectionString, '--interval', '0.3'], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(device);
    device.stdout.on('data', (d) => { if (String(d).includes('connected')) step(`new device: ${String(d).trim().split('\n')[0]}`); });
    await a.goto(`${UI}#/device/sensor-new`);
    await a.waitForSelector('#device-id', { timeout: T });
    await watchLivePoints(a, 3);
    await shot(a, '08-new-device-live');
    await a.goto(`${UI}#/map`);
    await a.waitForFunction(() => Number(document.querySelector('svg.map')?.dataset.devices) >= 2, null, { timeout: T });
    await shot(a, '09-map-two-devices');
    // The registry's geo query: within 500 m of sensor-1 (sensor-new is ~1.8 km away).
    await a.fill('#near-lat', '47.6205');
    await a.fill('#near-lon', '-122.3493');
    await a.fill('#near-km', '0.5');
    await a.click('#near-apply');
    await a.waitForFunction(() => document.querySelector('#map-query')?.textContent.includes('WITHIN_DISTANCE')
      && Number(document.querySelector('svg.map')?.dataset.devices) === 1, null, { timeout: T });
    step('map near sensor-1 (WITHIN_DISTANCE 500 m): 1 device');

    // 5. The alerts feed holds the overheat alerts.
    await a.goto(`${UI}#/alerts`);
    await a.waitForSelector('#alerts-feed li', { timeout: T });
    step(`alerts shown: ${await a.locator('#alerts-feed li').count()}`);
    await shot(a, '10-alerts');

    // 6. Provisioning: deactivate, activate, reset keys (a new key, shown once).
    await a.goto(`${UI}#/provision`);
    await a.fill('#target-device-id', 'sensor-new');
    for (const [button, status] of [['#deactivate', 'disabled'], ['#activate', 'enabled']]) {
      await a.click(button);
      await a.waitForFunction((s) => document.querySelector('#provision-result .ok')?.textContent.endsWith(`is ${s}`), status, { timeout: T });
      step(`sensor-new ${status}`);
    }
    await a.click('#reset-keys');
    await a.waitForSelector('#connection-string', { timeout: T });
    const reset = (await a.textContent('#connection-string')).trim();
    if (reset === connectionString || !reset.includes('DeviceId=sensor-new;SharedAccessKey=')) throw new Error('no new key shown');
    step('keys reset; the new connection string shown once');
    await shot(a, '11-keys-reset');

    // 7. Fleet operations: a method job over a query completes on the first (live) device; a
    // configuration targets it.
    await a.goto(`${UI}#/jobs`);
    await a.waitForSelector('#new-job-form', { timeout: T });
    await a.fill('#job-condition', `deviceId = '${DEVICE}'`);
    await a.fill('#job-method', 'ping');
    await a.click('#create-job');
    await a.waitForFunction(() => [...document.querySelectorAll('#jobs-table tr[data-job]')].some((r) =>
      r.querySelector('.job-status')?.textContent === 'completed'
      && r.querySelector('.job-statistics')?.textContent.startsWith('1 devices: 1 succeeded')), null, { timeout: T });
    step('method job completed: 1 device, 1 succeeded');
    // A twin update job over the same query sets a tag, read back from the device's twin.
    await a.fill('#twin-job-condition', `deviceId = '${DEVICE}'`);
    await a.fill('#twin-job-desired', '');
    await a.fill('#twin-job-tags', '{"wing": "north"}');
    await a.click('#create-twin-job');
    await a.waitForFunction(() => [...document.querySelectorAll('#jobs-table tr[data-type="scheduleUpdateTwin"]')].some((r) =>
      r.querySelector('.job-status')?.textContent === 'completed'
      && r.querySelector('.job-statistics')?.textContent.startsWith('1 devices: 1 succeeded')), null, { timeout: T });
    const twin = await a.evaluate(async (device) => {
      const r = await fetch(`/twins/${device}?api-version=2021-04-12`, { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('iot.session') } });
      return r.json();
    }, DEVICE);
    if (twin?.tags?.wing !== 'north') throw new Error(`the twin job did not set the tag: ${JSON.stringify(twin?.tags)}`);
    step('twin update job completed; the tag is on the twin');
    await shot(a, '12-jobs');
    await a.goto(`${UI}#/configurations`);
    await a.waitForSelector('#new-configuration-form', { timeout: T });
    await a.fill('#configuration-condition', `deviceId = '${DEVICE}'`);
    await a.click('#create-configuration');
    await a.waitForFunction(() => [...document.querySelectorAll('#configurations-table tr[data-configuration]')].some((r) =>
      r.querySelector('.targeted')?.textContent === '1'), null, { timeout: T });
    step(`configuration targets 1 device (applied: ${await a.textContent('#configurations-table tr[data-configuration] .applied')})`);
    await shot(a, '13-configurations');
    await a.click('#configurations-table tr[data-configuration] .delete-configuration');
    await a.waitForFunction(() => document.querySelectorAll('#configurations-table tr[data-configuration]').length === 0, null, { timeout: T });
    step('configuration deleted');
    step('passed');
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await browser.close();
  }
}

main().catch((e) => { console.error(`ui-test: FAILED: ${e.stack || e}`); process.exit(1); });
