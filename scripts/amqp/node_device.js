// Microsoft's Node SDKs, unmodified, against the hub's AMQP endpoint (127.0.0.1:5671, the port
// azure-iot-device-amqp always uses): the device sends telemetry with properties and settles
// three C2D messages (complete, reject, abandon then complete); azure-iothub's service Client
// sends them over AMQP with full acks and reads the feedback with getFeedbackReceiver.
//
// IOT_DEVICE_CS: the device's connection string; IOT_SERVICE_CS: iothubowner's; IOT_CA: the
// hub's CA certificate (PEM) for the device's `ca` option (the service SDK has none: the script
// that runs this sets NODE_EXTRA_CA_CERTS for it); IOT_AMQP_TRANSPORT: `amqp` (the default) or
// `amqp-ws`, both SDKs' AmqpWs transports (AMQP over WebSocket, wss://HostName:443/$iothub/
// websocket). IOT_RUN_TAG: prefixed to the message ids. Exits 0 when every check holds.
'use strict';

const fs = require('fs');
const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { Client: ServiceClient, AmqpWs: ServiceAmqpWs } = require('azure-iothub');
const { Message: ServiceMessage } = require('azure-iot-common');

const deviceCs = process.env.IOT_DEVICE_CS;
const serviceCs = process.env.IOT_SERVICE_CS;
const ca = fs.readFileSync(process.env.IOT_CA, 'utf8');
const deviceId = /DeviceId=([^;]+)/.exec(deviceCs)[1];
const overWs = (process.env.IOT_AMQP_TRANSPORT || 'amqp') === 'amqp-ws';
const name = overWs ? 'node amqp-ws interop' : 'node amqp interop';
const run = (process.env.IOT_RUN_TAG || '') + Date.now().toString(36);

function fail(why) {
  console.error(name + ': ' + why);
  process.exit(1);
}

const timer = setTimeout(() => fail('timed out'), 60000);

async function main() {
  const device = DeviceClient.fromConnectionString(deviceCs, overWs ? AmqpWs : Amqp);
  device.setOptions({ ca });
  await device.open();

  const event = new Message(JSON.stringify({ temp: 21.5 }));
  event.messageId = 'node-amqp-' + run;
  event.correlationId = 'corr-' + run;
  event.contentType = 'application/json';
  event.contentEncoding = 'utf-8';
  event.properties.add('site', 'lab-7');
  await device.sendEvent(event);
  console.log('telemetry sent: ' + event.messageId);

  // C2D: what the device does with each message, by message id.
  const plan = {
    ['complete-' + run]: 'complete',
    ['reject-' + run]: 'reject',
    ['abandon-' + run]: 'abandon',
  };
  const seen = {};
  // Settlements go out one at a time, each in a later turn of the event loop than the one
  // before. rhea (the SDK's AMQP stack, 1.x to 3.0.5) gathers the dispositions of one turn and
  // merges two consecutive delivery ids into one range with the *first* one's outcome, without
  // comparing their outcomes (lib/session.js, write_dispositions: the comparison is skipped
  // while the range holds one delivery). A completion followed by a rejection settled in the
  // same turn thus reaches any endpoint, IoT Hub too, as two completions; this made the
  // interop flaky whenever two C2D messages arrived together (docs/amqp.md).
  let settling = Promise.resolve();
  const settle = (action, msg) => {
    settling = settling.then(() => new Promise((resolve, reject) => {
      device[action](msg, (err) => (err ? reject(err) : setTimeout(resolve, 20)));
    }));
    return settling;
  };
  const done = new Promise((resolve, reject) => {
    device.on('error', reject);
    device.on('message', (msg) => {
      const id = msg.messageId;
      seen[id] = (seen[id] || 0) + 1;
      const body = msg.data.toString();
      if (!body.startsWith('c2d ')) return reject(new Error('unexpected body ' + body));
      if (msg.properties.getValue('color') !== 'blue') {
        return reject(new Error('the C2D message lost its property: ' + JSON.stringify(msg.properties)));
      }
      let action = plan[id];
      // The abandoned message comes back; the second time it is completed.
      if (action === 'abandon' && seen[id] > 1) action = 'complete';
      console.log('c2d ' + id + ' delivery ' + seen[id] + ': ' + action);
      settle(action, msg).then(() => {
        if (seen['complete-' + run] >= 1 && seen['reject-' + run] >= 1 && seen['abandon-' + run] >= 2) {
          resolve();
        }
      }, reject);
    });
  });

  const service = ServiceClient.fromConnectionString(serviceCs, overWs ? ServiceAmqpWs : undefined);
  await service.open();
  const feedback = [];
  const receiver = await new Promise((resolve, reject) =>
    service.getFeedbackReceiver((err, r) => (err ? reject(err) : resolve(r))));
  const feedbackDone = new Promise((resolve, reject) => {
    receiver.on('errorReceived', reject);
    receiver.on('message', (msg) => {
      const records = JSON.parse(msg.data.toString());
      if (!Array.isArray(records)) return reject(new Error('feedback is not a JSON array'));
      for (const r of records) {
        if (r.deviceId === deviceId) feedback.push(r);
      }
      receiver.complete(msg, () => {});
      const status = (id) => (feedback.find((r) => r.originalMessageId === id) || {}).statusCode;
      if (status('complete-' + run) && status('reject-' + run) && status('abandon-' + run)) {
        resolve(status);
      }
    });
  });
  for (const id of Object.keys(plan)) {
    const m = new ServiceMessage('c2d ' + id);
    m.messageId = id;
    m.ack = 'full';
    m.properties.add('color', 'blue');
    await service.send(deviceId, m);
    console.log('c2d sent: ' + id);
  }
  await done;
  const status = await feedbackDone;
  const expected = { complete: 'Success', reject: 'Rejected', abandon: 'Success' };
  for (const [name, code] of Object.entries(expected)) {
    const got = status(name + '-' + run);
    if (got !== code) fail('feedback of ' + name + ' is ' + got + ', not ' + code);
  }
  console.log('feedback: ' + JSON.stringify(feedback.map((r) => [r.originalMessageId, r.statusCode])));
  await device.close();
  await service.close();
  clearTimeout(timer);
  console.log(name + ': ok');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
