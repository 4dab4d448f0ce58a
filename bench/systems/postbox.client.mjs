// Load side for postbox: one `createClient` per user over the WebSocket client transport, each
// with its own memory client store — what a chat app does, 200 times in one process. `sent` is
// the ack (✓: committed on the server); the recipient's `message` event is the delivery; the
// sender's `delivered` status (✓✓) is reported too.
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import * as ws from 'postbox/transport/websocket';
import { clearImmediate } from 'node:timers';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION, decodeServerFrame, encodeFrame } from 'postbox/protocol';
import { openMany } from './common.mjs';

// The client transport may live in its own module (browser-safe build); take it from either.
const websocketClientTransport =
  ws.websocketClientTransport ??
  (await import('postbox/transport/websocket-client')).websocketClientTransport;

export const capabilities = { ack: true, status: true };

function tagOfBody(b) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}

// `crypto: 'libsignal'` (the e2ee scenario): the Signal protocol on every client.
const libsignal = async () => (await import('postbox/crypto/libsignal')).libsignalCrypto;

function open(url, user, setup, crypto) {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store: memoryClientStore(),
    credentials: user,
    ...(crypto ? { crypto: crypto() } : {}),
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

export async function connect({ url, n, size, onDeliver, onAck, onStatus, crypto }) {
  const tagMaps = [];
  const adapter = crypto === 'libsignal' ? await libsignal() : undefined;
  const clients = await openMany(n, (i) =>
    open(
      url,
      `u${i}`,
      (c) => {
        tagMaps[i] = sender(c, i, onAck, onStatus);
        c.on('message', (m) => onDeliver(i, tagOfBody(m.body)));
      },
      adapter,
    ),
  );
  const body = new Uint8Array(size);
  const view = new DataView(body.buffer);
  return {
    send(i, to, tag) {
      view.setUint32(0, tag, true);
      // `send` copies the body when called, so one buffer serves every send. Not awaited, as
      // an app's send button would not: the id is known once stored, well before the ack can
      // come. A refused send is a bug here: its rejection is left unhandled and ends the run.
      void clients[i].send(`u${to}`, body).then((id) => tagMaps[i].set(id, tag));
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
      // Ids become known as the sends resolve; a status may come first, so both are counted.
      const acked = new Set();
      let failed;
      let check = () => {};
      c.on('status', (s) => {
        if (s.status === 'failed') failed ??= new Error(`send failed: ${s.id}`);
        else if (s.status !== 'pending') acked.add(s.id);
        check();
      });
      const body = new Uint8Array(size);
      const view = new DataView(body.buffer);
      const sends = [];
      for (let j = k; j < devices; j += senders) {
        for (let m = 0; m < perDevice; m++) {
          view.setUint32(0, j * perDevice + m, true);
          sends.push(c.send(`r${j}`, body));
        }
      }
      const ids = await Promise.all(sends);
      await new Promise((resolve, reject) => {
        // Every status this client gets is about one of these sends.
        check = () => (failed ? reject(failed) : acked.size >= ids.length && resolve());
        check();
      });
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

/**
 * A group member at the protocol level: a WebSocket that says hello, decodes and validates every
 * frame the server sends (the codec and schemas the client engine uses), reports each group
 * message and acks it the way the engine does (src/client/ack-pacing.ts) — at once when no ack
 * left in the last `ACK_DELAY_MS`, else `ACK_DELAY_MS` after the last one, or at once when half the
 * server's delivery window awaits its ack. What it skips is the engine's client
 * store and events: a phone pays for those on its own CPU, while here 1,024 members share the
 * one load core.
 */
const ACK_DELAY_MS = 25; // the engine's `ackDelayMs` default
function wireMember(url, user, onMsg) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let acks = [];
    let batch = 512;
    let timer; // a Timeout, or an Immediate (cleared with its own function)
    let lastAckAt = -Infinity;
    const flush = () => {
      if (timer?.constructor?.name === 'Immediate') clearImmediate(timer);
      else clearTimeout(timer);
      timer = undefined;
      lastAckAt = performance.now();
      for (let k = 0; k < acks.length; k += 1024) {
        ws.send(encodeFrame({ t: 'ack', o: acks.slice(k, k + 1024) }));
      }
      acks = [];
    };
    const handshake = setTimeout(() => reject(new Error(`${user}: no welcome in 30 s`)), 30_000);
    ws.once('open', () =>
      ws.send(encodeFrame({ t: 'hello', v: [PROTOCOL_VERSION, PROTOCOL_VERSION], cred: user })),
    );
    ws.once('error', reject);
    ws.on('message', (data) => {
      const f = decodeServerFrame(data);
      if (f.t === 'welcome') {
        clearTimeout(handshake);
        if (f.lim.dw) batch = Math.max(1, Math.floor(f.lim.dw / 2));
        resolve({ close: () => ws.terminate() });
        return;
      }
      if (f.t === 'ping') return ws.send(encodeFrame({ t: 'pong' }));
      if (f.o === undefined) return;
      if (f.t === 'msg' && f.g) onMsg(f.b);
      acks.push(f.o);
      if (acks.length >= batch) flush();
      else if (timer === undefined) {
        // After the frame's own synchronous work, like the engine's "store work ran dry".
        const wait = lastAckAt + ACK_DELAY_MS - performance.now();
        timer = wait > 0 ? setTimeout(flush, wait) : setImmediate(flush);
      }
    });
  });
}

/**
 * Group fan-out: members `u1…u(n-1)` are {@link wireMember}s; each group has a fresh sender `s<g>`,
 * a client engine (memory store) that creates group `#g<g>` with u1…u(members-1) through the
 * client API (committed when it resolves). Its `sendToGroup`'s `sent` (✓, committed) and
 * aggregate `delivered` (✓✓, every member has it) statuses are reported. Fresh, because a sender
 * keeps every member's receipt of every message it sent: after the smaller groups' saturation
 * runs that is some 600k entries in its memory store, whose garbage collection would otherwise
 * be measured as fan-out latency.
 */
export async function fanoutConnect({ url, n, size, onDeliver, onAck, onStatus }) {
  const members = await openMany(n - 1, (k) =>
    wireMember(url, `u${k + 1}`, (body) => onDeliver(k + 1, tagOfBody(body))),
  );
  const senders = [];
  const body = new Uint8Array(size);
  const view = new DataView(body.buffer);
  return {
    async group(g, count) {
      const from = await open(url, `s${g}`);
      senders.push(from);
      const tags = sender(
        from,
        0,
        (_i, tag) => onAck?.(tag),
        (_i, tag) => onStatus?.(tag),
      );
      const users = Array.from({ length: count - 1 }, (_, k) => `u${k + 1}`);
      const id = await from.createGroup(`fanout ${count}`, users, `#g${g}`);
      return {
        send(tag) {
          view.setUint32(0, tag, true);
          void from.sendToGroup(id, body).then((m) => tags.set(m, tag));
        },
      };
    },
    async close() {
      for (const m of members) m.close();
      await Promise.all(senders.map((c) => c.close()));
    },
  };
}
