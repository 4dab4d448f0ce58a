// Load side for mosquitto: each client subscribes to its own topic at QoS 1 and publishes at
// QoS 1 to the recipient's topic; the PUBACK is the ack. TCP_NODELAY is set on the client
// socket (mqtt.js does not), and the bench's broker config sets it on the broker side.
import net from 'node:net';
import mqtt from 'mqtt';
import { openMany } from './common.mjs';

export const capabilities = { ack: true };

/** Connects one MQTT client; resolves once CONNACK arrived. */
export function mqttClient(url, options, setup) {
  const { hostname, port } = new URL(url);
  const client = new mqtt.MqttClient(
    () => net.createConnection({ host: hostname, port: Number(port), noDelay: true }),
    {
      protocolVersion: 4,
      reconnectPeriod: 0,
      keepalive: 60,
      ...options,
    },
  );
  setup?.(client);
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client));
    client.once('error', reject);
  });
}

function subscribe(client, topic) {
  return new Promise((resolve, reject) =>
    client.subscribe(topic, { qos: 1 }, (err) => (err ? reject(err) : resolve())),
  );
}

export async function connect({ url, n, size, onDeliver, onAck, prefix }) {
  const clients = await openMany(n, async (i) => {
    const c = await mqttClient(url, { clientId: `${prefix}-u${i}`, clean: true });
    c.on('message', (_topic, payload) => onDeliver(i, payload.readUInt32LE(0)));
    await subscribe(c, `${prefix}/u${i}`);
    return c;
  });
  return {
    send(i, to, tag) {
      const b = Buffer.alloc(size);
      b.writeUInt32LE(tag, 0);
      clients[i].publish(`${prefix}/u${to}`, b, { qos: 1 }, () => onAck(i, tag));
    },
    async close() {
      for (const c of clients) c.end(true);
    },
  };
}

/**
 * Offline drain, setup: every device opens a persistent session (clean: false) with a QoS 1
 * subscription and leaves; `senders` clients then publish `perDevice` messages to each device
 * and wait for every PUBACK (the broker holds them for the offline sessions).
 */
export async function drainSetup({ url, devices, perDevice, senders, size, prefix }) {
  await openMany(devices, async (j) => {
    const c = await mqttClient(url, { clientId: `${prefix}-r${j}`, clean: false });
    await subscribe(c, `${prefix}/r${j}`);
    await new Promise((r) => c.end(false, r));
  });
  const pubs = await openMany(senders, (k) => mqttClient(url, { clientId: `${prefix}-s${k}`, clean: true }));
  await Promise.all(
    pubs.map(async (c, k) => {
      const acks = [];
      for (let j = k; j < devices; j += senders) {
        for (let m = 0; m < perDevice; m++) {
          const b = Buffer.alloc(size);
          b.writeUInt32LE(j * perDevice + m, 0);
          acks.push(
            new Promise((resolve, reject) =>
              c.publish(`${prefix}/r${j}`, b, { qos: 1 }, (e) => (e ? reject(e) : resolve())),
            ),
          );
        }
      }
      await Promise.all(acks);
      await new Promise((r) => c.end(false, r));
    }),
  );
}

/** Offline drain, one device comes back: resumes its session and receives what waited. */
export async function drainConnect({ url, device, onMessage, prefix }) {
  // Queued messages can arrive in the same read as the CONNACK: listen before connecting.
  const c = await mqttClient(url, { clientId: `${prefix}-r${device}`, clean: false }, (client) =>
    client.on('message', (_t, payload) => onMessage(payload.readUInt32LE(0))),
  );
  return { close: () => c.end(true) };
}
