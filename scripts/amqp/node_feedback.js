// azure-iothub's feedback receiver (AMQP, unmodified) sees the completion of the C2D message
// IOT_MESSAGE_ID (sent by azure-iot-hub Python, which has no feedback API). IOT_SERVICE_CS:
// iothubowner's connection string; the hub's CA comes from NODE_EXTRA_CA_CERTS.
'use strict';

const { Client } = require('azure-iothub');

const wanted = process.env.IOT_MESSAGE_ID;
const timer = setTimeout(() => {
  console.error('node feedback: no feedback for ' + wanted);
  process.exit(1);
}, 30000);

const service = Client.fromConnectionString(process.env.IOT_SERVICE_CS);
service.open((err) => {
  if (err) throw err;
  service.getFeedbackReceiver((err, receiver) => {
    if (err) throw err;
    receiver.on('message', (msg) => {
      const records = JSON.parse(msg.data.toString());
      receiver.complete(msg, () => {});
      const record = records.find((r) => r.originalMessageId === wanted);
      if (!record) return;
      if (record.statusCode !== 'Success') {
        console.error('node feedback: ' + wanted + ' ended ' + record.statusCode);
        process.exit(1);
      }
      console.log('feedback: ' + wanted + ' ' + record.statusCode + ' at ' + record.enqueuedTimeUtc);
      clearTimeout(timer);
      service.close(() => process.exit(0));
    });
  });
});
