// A back end written with Microsoft's Node service SDK `azure-iothub` (Registry, Client;
// unmodified), run by iot-gateway's HTTP interop test against the hub's service REST API.
//
// Environment: IOT_SERVICE_CS (the iothubowner connection string; the SDK ignores a port, so the
// hub listens on 443), NODE_EXTRA_CA_CERTS (the hub's CA certificate), NODE_PATH (where npm put
// azure-iothub).
//
//   node_service.js create DEVICE    Registry.create, prints "created {json}" with the primary key
//   node_service.js exercise DEVICE  Registry.get/list/updateTwin, Registry.createQuery over twins,
//                                    Client.invokeDeviceMethod; one line per step
//
// Exits non-zero (with the reason on stderr) when the hub answers anything unexpected.
'use strict';

const { Registry, Client } = require('azure-iothub');

function say(...parts) {
  console.log(parts.join(' '));
}

function check(condition, what) {
  if (!condition) {
    throw new Error('node_service: ' + what);
  }
}

// Calls an SDK method in its callback form and resolves with the callback's first result.
function call(target, method, ...args) {
  return new Promise((resolve, reject) => {
    target[method](...args, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

async function create(registry, deviceId) {
  const device = await call(registry, 'create', { deviceId: deviceId, status: 'enabled' });
  check(device.deviceId === deviceId, 'created ' + device.deviceId);
  const key = device.authentication.symmetricKey.primaryKey;
  check(Buffer.from(key, 'base64').length >= 32, 'a generated primary key');
  say('created', JSON.stringify({ deviceId: deviceId, primaryKey: key }));
}

async function exercise(registry, client, deviceId) {
  const device = await call(registry, 'get', deviceId);
  check(device.deviceId === deviceId && device.status === 'enabled', 'get ' + JSON.stringify(device));
  say('got', device.etag);

  const devices = await call(registry, 'list');
  check(devices.some((d) => d.deviceId === deviceId), 'list holds the device');
  say('listed', devices.length);

  const twin = await call(registry, 'getTwin', deviceId);
  check(twin.properties.reported.firmware === '2.0', 'reported firmware in the twin');
  const patch = { tags: { owner: 'node', rack: 4 }, properties: { desired: { owner: 'node' } } };
  const updated = await call(registry, 'updateTwin', deviceId, patch, twin.etag);
  check(updated.tags.owner === 'node', 'updateTwin wrote the tags');
  check(updated.properties.desired.owner === 'node', 'updateTwin wrote desired');
  say('twin', JSON.stringify({ tags: updated.tags }));

  const query = registry.createQuery(
    "SELECT * FROM devices WHERE tags.owner = 'node' AND properties.reported.firmware = '2.0'", 10);
  const twins = await call(query, 'nextAsTwin');
  check(twins.length === 1 && twins[0].deviceId === deviceId, 'query by tag and reported property');
  const count = registry.createQuery('SELECT COUNT() AS n FROM devices', 10);
  const counted = await call(count, 'next');
  check(counted.length === 1 && counted[0].n >= 1, 'count query ' + JSON.stringify(counted));
  say('queried', twins.length);

  const result = await call(client, 'invokeDeviceMethod', deviceId, {
    methodName: 'reboot',
    payload: { delay: 2 },
    responseTimeoutInSeconds: 30,
  });
  check(result.status === 200, 'method status ' + result.status);
  check(result.payload.handled === 'reboot' && result.payload.echo.delay === 2,
    'method payload ' + JSON.stringify(result.payload));
  say('method', JSON.stringify(result));
}

async function main() {
  const [command, deviceId] = process.argv.slice(2);
  const connectionString = process.env.IOT_SERVICE_CS;
  const registry = Registry.fromConnectionString(connectionString);
  if (command === 'create') {
    await create(registry, deviceId);
  } else if (command === 'exercise') {
    await exercise(registry, Client.fromConnectionString(connectionString), deviceId);
  } else {
    throw new Error('unknown command ' + command);
  }
  say('ok');
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    if (err && err.responseBody) {
      console.error('response body:', err.responseBody);
    }
    process.exit(1);
  },
);
