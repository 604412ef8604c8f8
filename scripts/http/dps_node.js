// Microsoft's Node provisioning device client, unmodified: azure-iot-provisioning-device with
// its MQTT transport (azure-iot-provisioning-device-mqtt, mqtts:// on port 8883) or its HTTP
// transport (azure-iot-provisioning-device-http, https:// on port 443), and the symmetric-key
// security client (azure-iot-security-symmetric-key).
//
//   node dps_node.js register mqtt|http PREFIX COUNT GROUP_KEY_BASE64
//       registers PREFIX-0 … PREFIX-(COUNT-1) at once, each with the group key derived for its
//       registration id as DPS derives it; prints `registered [results…]`, or `failed …` and
//       exits 1.
//   node dps_node.js refused mqtt|http REGISTRATION_ID DEVICE_KEY_BASE64
//       expects the registration to be refused; prints `refused NAME STATUS`.
//
// Environment: IOT_DPS_SCOPE (id scope), IOT_DPS_HOST (provisioning host, no port),
// NODE_EXTRA_CA_CERTS (the hub's CA), NODE_PATH (where the packages are installed).
'use strict';

const crypto = require('crypto');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const [command, transportName, first, second, third] = process.argv.slice(2);
const scope = process.env.IOT_DPS_SCOPE;
const host = process.env.IOT_DPS_HOST || 'localhost';

function transport() {
  if (transportName === 'mqtt') {
    return new (require('azure-iot-provisioning-device-mqtt').Mqtt)();
  }
  if (transportName === 'http') {
    return new (require('azure-iot-provisioning-device-http').Http)();
  }
  throw new Error('transport must be mqtt or http');
}

// The device key of a group enrollment: HMAC-SHA256(group key, registration id), as the DPS
// documentation derives it.
function deriveKey(groupKeyBase64, registrationId) {
  return crypto
    .createHmac('SHA256', Buffer.from(groupKeyBase64, 'base64'))
    .update(registrationId, 'utf8')
    .digest('base64');
}

function register(registrationId, key) {
  const security = new SymmetricKeySecurityClient(registrationId, key);
  const client = ProvisioningDeviceClient.create(host, scope, transport(), security);
  return client.register();
}

async function main() {
  if (command === 'register') {
    const count = Number(second);
    const ids = Array.from({ length: count }, (_, i) => `${first}-${i}`);
    const settled = await Promise.allSettled(
      ids.map((id) => register(id, deriveKey(third, id)))
    );
    const failed = settled
      .map((s, i) => [ids[i], s])
      .filter(([, s]) => s.status === 'rejected')
      .map(([id, s]) => `${id}: ${s.reason && s.reason.name} ${s.reason && s.reason.message}`);
    if (failed.length > 0) {
      console.log('failed ' + JSON.stringify(failed));
      process.exit(1);
    }
    const results = settled.map((s) => ({
      registrationId: s.value.registrationId,
      deviceId: s.value.deviceId,
      assignedHub: s.value.assignedHub,
      status: s.value.status,
      substatus: s.value.substatus,
    }));
    console.log('registered ' + JSON.stringify(results));
  } else if (command === 'refused') {
    try {
      const result = await register(first, second);
      console.log('unexpectedly registered ' + JSON.stringify(result));
      process.exit(1);
    } catch (err) {
      const status = err.response ? err.response.statusCode : (err.result && err.result.status);
      console.log(`refused ${err.name} ${status === undefined ? '-' : status}`);
    }
  } else {
    throw new Error('usage: dps_node.js register|refused mqtt|http …');
  }
  // The MQTT transport may keep a timer alive after disconnecting.
  process.exit(0);
}

main().catch((err) => {
  console.log('error ' + (err && err.stack ? err.stack : err));
  process.exit(1);
});
