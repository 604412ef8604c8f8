// Microsoft's Node device SDK (azure-iot-device with the azure-iot-device-http transport)
// against the hub's HTTPS device API: send telemetry with properties, receive a C2D message sent
// through the hub's REST extension and complete it, then read the feedback record.
//
// Env: DEVICE_CS (device connection string), SERVICE_CS (iothubowner connection string),
// NODE_EXTRA_CA_CERTS (the hub's CA), RUN_ID (a marker to find in the hub's telemetry output).
'use strict';

const crypto = require('crypto');
const https = require('https');
const { Client, Message } = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');

function fail(message) {
  console.error('device_interop: FAIL: ' + message);
  process.exit(1);
}

function parse(cs) {
  return Object.fromEntries(cs.split(';').map((p) => {
    const i = p.indexOf('=');
    return [p.slice(0, i), p.slice(i + 1)];
  }));
}

function serviceToken(cs) {
  const sr = encodeURIComponent(cs.HostName);
  const se = Math.floor(Date.now() / 1000) + 3600;
  const sig = crypto.createHmac('sha256', Buffer.from(cs.SharedAccessKey, 'base64'))
    .update(`${sr}\n${se}`).digest('base64');
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${cs.SharedAccessKeyName}`;
}

function request(service, method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const [host, port] = service.HostName.split(':');
    const req = https.request({
      host, port: port || 443, method, path,
      headers: { Authorization: serviceToken(service), ...headers },
    }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

async function main() {
  const service = parse(process.env.SERVICE_CS);
  const deviceId = parse(process.env.DEVICE_CS).DeviceId;
  const runId = process.env.RUN_ID;
  const client = Client.fromConnectionString(process.env.DEVICE_CS, Http);
  await client.open();

  const message = new Message(JSON.stringify({ temperature: 21.5, run: runId }));
  message.messageId = `node-${runId}`;
  message.correlationId = 'corr-node';
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  message.properties.add('source', 'node-http');
  await client.sendEvent(message);
  console.log(`device_interop: telemetry sent (message id node-${runId})`);

  const batch = [1, 2].map((n) => {
    const m = new Message(`batch-${n}-${runId}`);
    m.properties.add('batch', String(n));
    return m;
  });
  await client.sendEventBatch(batch);
  console.log('device_interop: batch of 2 sent');

  const c2dId = `c2d-${runId}`;
  const received = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no C2D message within 30 s')), 30000);
    client.on('message', (msg) => {
      clearTimeout(timer);
      client.complete(msg, (err) => (err ? reject(err) : resolve(msg)));
    });
    client.on('error', (err) => console.error('device_interop: client error', err.message));
  });
  const sent = await request(service, 'POST',
    `/devices/${encodeURIComponent(deviceId)}/messages/cloudToDevice?api-version=2021-04-12`,
    { 'iothub-messageid': c2dId, 'iothub-ack': 'full', 'iothub-app-color': 'green', 'Content-Type': 'text/plain' },
    'open the valve');
  if (sent.status !== 200) fail(`C2D send answered ${sent.status}: ${sent.body}`);
  const msg = await received;
  if (msg.messageId !== c2dId) fail(`C2D message id ${msg.messageId}, expected ${c2dId}`);
  if (msg.data.toString() !== 'open the valve') fail(`C2D payload ${msg.data}`);
  const color = msg.properties.getValue('iothub-app-color');
  if (color !== 'green') fail(`C2D property iothub-app-color=${color}`);
  console.log(`device_interop: C2D ${msg.messageId} received and completed (lock ${msg.lockToken})`);

  let record;
  for (let i = 0; i < 100 && !record; i++) {
    const fb = await request(service, 'GET', '/messages/serviceBound/feedback?from=0&max=100&api-version=2021-04-12', {});
    if (fb.status !== 200) fail(`feedback answered ${fb.status}: ${fb.body}`);
    record = JSON.parse(fb.body).records.find((r) => r.originalMessageId === c2dId);
    if (!record) await new Promise((r) => setTimeout(r, 100));
  }
  if (!record) fail('no feedback record for the completed C2D message');
  if (record.statusCode !== 'Success' || record.deviceId !== deviceId) fail(`feedback ${JSON.stringify(record)}`);
  console.log(`device_interop: feedback ${JSON.stringify(record)}`);
  await client.close();
}

main().then(() => process.exit(0), (err) => fail(err && err.stack ? err.stack : String(err)));
