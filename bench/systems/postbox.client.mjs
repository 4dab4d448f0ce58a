// Load side for postbox: one `createClient` per user over the WebSocket client transport, each
// with its own memory client store — what a chat app does, 200 times in one process. `sent` is
// the ack (✓: committed on the server); the recipient's `message` event is the delivery; the
// sender's `delivered` status (✓✓) is reported too.
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import * as ws from 'postbox/transport/websocket';
import { openMany } from './common.mjs';

// The client transport may live in its own module (browser-safe build); take it from either.
const websocketClientTransport =
  ws.websocketClientTransport ??
  (await import('postbox/transport/websocket-client')).websocketClientTransport;

export const capabilities = { ack: true, status: true };

function tagOfBody(b) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}

function open(url, user, setup) {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store: memoryClientStore(),
    credentials: user,
  });
  client.on('error', () => {});
  setup?.(client);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${user}: no welcome in 30 s`)), 30_000);
    const onState = (state, error) => {
      if (state === 'open') {
        clearTimeout(timer);
        client.off('connection', onState);
        resolve(client);
      } else if (state === 'closed') {
        clearTimeout(timer);
        reject(error ?? new Error(`${user}: closed`));
      }
    };
    client.on('connection', onState);
  });
}

function sender(client, i, onAck, onStatus) {
  const tags = new Map();
  client.on('status', (s) => {
    const tag = tags.get(s.id);
    if (tag === undefined) return;
    if (s.status === 'sent') onAck?.(i, tag);
    else if (s.status === 'delivered' || s.status === 'read') {
      tags.delete(s.id);
      onStatus?.(i, tag);
    }
  });
  return tags;
}

export async function connect({ url, n, size, onDeliver, onAck, onStatus }) {
  const tagMaps = [];
  const clients = await openMany(n, (i) =>
    open(url, `u${i}`, (c) => {
      tagMaps[i] = sender(c, i, onAck, onStatus);
      c.on('message', (m) => onDeliver(i, tagOfBody(m.body)));
    }),
  );
  const body = new Uint8Array(size);
  const view = new DataView(body.buffer);
  return {
    send(i, to, tag) {
      view.setUint32(0, tag, true);
      // `send` copies the body before it returns, so one buffer serves every send.
      tagMaps[i].set(clients[i].send(`u${to}`, body), tag);
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

export async function openIdle({ url, from, count }) {
  const clients = await openMany(count, (k) => open(url, `u${from + k}`));
  return {
    async close() {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

/**
 * Offline drain, setup: the server registered the devices `r0…` beforehand (they never
 * connected); `senders` clients send `perDevice` messages to each and wait until every one is
 * `sent` (committed), then disconnect.
 */
export async function drainSetup({ url, devices, perDevice, senders, size }) {
  const clients = await openMany(senders, (k) => open(url, `s${k}`));
  await Promise.all(
    clients.map(async (c, k) => {
      const ids = new Set();
      const done = new Promise((resolve, reject) => {
        c.on('status', (s) => {
          if (s.status === 'failed') reject(new Error(`send failed: ${s.id}`));
          else if (s.status !== 'pending' && ids.delete(s.id) && ids.size === 0) resolve();
        });
      });
      const body = new Uint8Array(size);
      const view = new DataView(body.buffer);
      for (let j = k; j < devices; j += senders) {
        for (let m = 0; m < perDevice; m++) {
          view.setUint32(0, j * perDevice + m, true);
          ids.add(c.send(`r${j}`, body));
        }
      }
      if (ids.size > 0) await done;
      await c.close();
    }),
  );
}

/** Offline drain, one device comes back and drains its inbox. */
export async function drainConnect({ url, device, onMessage }) {
  const c = await open(url, `r${device}`, (client) =>
    client.on('message', (m) => onMessage(tagOfBody(m.body))),
  );
  return { close: () => c.close() };
}
