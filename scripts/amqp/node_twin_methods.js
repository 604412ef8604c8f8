// Microsoft's Node SDKs, unmodified, against the hub's twin and direct-method links over AMQP:
// the device (azure-iot-device with azure-iot-device-amqp) gets its twin, updates reported
// properties, sees a desired patch the service made with azure-iothub's Registry.updateTwin
// (REST), and answers a direct method the service invokes with Client.invokeDeviceMethod (REST).
//
// IOT_DEVICE_CS: the device's connection string; IOT_SERVICE_CS: iothubowner's (HostName
// localhost: the service SDK's REST calls go to port 443); IOT_CA: the hub's CA certificate for
// the device's `ca` option (NODE_EXTRA_CA_CERTS gives it to the service SDK);
// IOT_AMQP_TRANSPORT: `amqp` (the default) or `amqp-ws` (the device's AmqpWs transport, AMQP over
// WebSocket on port 443). Exits 0 when every check holds.
'use strict';

const fs = require('fs');
const { Client: DeviceClient } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { Client: ServiceClient, Registry } = require('azure-iothub');

const deviceCs = process.env.IOT_DEVICE_CS;
const serviceCs = process.env.IOT_SERVICE_CS;
const ca = fs.readFileSync(process.env.IOT_CA, 'utf8');
const deviceId = /DeviceId=([^;]+)/.exec(deviceCs)[1];
const overWs = (process.env.IOT_AMQP_TRANSPORT || 'amqp') === 'amqp-ws';
const name = overWs ? 'node amqp-ws twin/methods interop' : 'node amqp twin/methods interop';
const run = Date.now().toString(36);

function fail(why) {
  console.error(name + ': ' + why);
  process.exit(1);
}

const timer = setTimeout(() => fail('timed out'), 60000);

async function main() {
  const device = DeviceClient.fromConnectionString(deviceCs, overWs ? AmqpWs : Amqp);
  device.setOptions({ ca });
  await device.open();
  device.on('error', (e) => fail('device error: ' + e));

  // Direct method: answered by the device over its method links. The service's call returns
  // as soon as the hub has the answer, which can be before the hub's disposition of the answer
  // reaches the device (1 ms apart in a run traced with DEBUG=rhea:frames); closing the device
  // then fails the answer's send with "Sender Link Detached". So the device closes only once
  // its answer is settled.
  let answered;
  const answerSettled = new Promise((resolve) => { answered = resolve; });
  device.onDeviceMethod('reboot', (request, response) => {
    console.log('method ' + request.methodName + ' payload ' + JSON.stringify(request.payload));
    response.send(200, { rebooting: true, delay: request.payload && request.payload.delay }, (err) => {
      if (err) fail('method response: ' + err);
      answered();
    });
  });

  // Twin: GET, reported PATCH, desired patches.
  const twin = await device.getTwin();
  console.log('twin desired version ' + twin.properties.desired.$version);
  const desiredSeen = new Promise((resolve) => {
    twin.on('properties.desired', (delta) => {
      console.log('desired delta ' + JSON.stringify(delta));
      if (delta.run === run) resolve(delta);
    });
  });
  await new Promise((resolve, reject) =>
    twin.properties.reported.update({ fw: 'fw-' + run }, (err) => (err ? reject(err) : resolve())));
  console.log('reported updated');

  const registry = Registry.fromConnectionString(serviceCs);
  const stored = (await registry.getTwin(deviceId)).responseBody;
  if (stored.properties.reported.fw !== 'fw-' + run) {
    fail('the service does not see the reported property: ' + JSON.stringify(stored.properties.reported));
  }
  // The desired subscription is made by the SDK when the listener is added; give the PUT a
  // moment before patching (a patch made earlier is delivered too, folded, once it subscribes).
  await new Promise((r) => setTimeout(r, 500));
  await registry.updateTwin(deviceId, { properties: { desired: { run, mode: 'eco' } } }, '*');
  const delta = await desiredSeen;
  if (delta.mode !== 'eco' || typeof delta.$version !== 'number') fail('bad desired delta ' + JSON.stringify(delta));

  const service = ServiceClient.fromConnectionString(serviceCs);
  const result = await service.invokeDeviceMethod(deviceId, {
    methodName: 'reboot',
    payload: { delay: 3 },
    responseTimeoutInSeconds: 20,
    connectTimeoutInSeconds: 10,
  });
  const body = result.result;
  console.log('method result ' + JSON.stringify(body));
  if (body.status !== 200 || !body.payload || body.payload.rebooting !== true || body.payload.delay !== 3) {
    fail('bad method result ' + JSON.stringify(body));
  }
  await answerSettled;
  await device.close();
  clearTimeout(timer);
  console.log(name + ': ok');
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
