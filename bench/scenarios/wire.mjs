// Bytes on the wire for one 1:1 message's whole life, payload excluded, 16-character user ids.
// postbox: the real engines over the memory transport, every frame counted as it crosses the
// link. Socket.IO: a real server and clients on 127.0.0.1, every Engine.IO packet counted at the
// server. XMPP: the stanzas of the same exchange written out (RFC 6120/6121, XEP-0184 receipt,
// XEP-0198 acks). MQTT (for reference): QoS 1 publish + PUBACK each way, receipt published back.
// "with WS framing" adds the WebSocket frame header each frame costs (2 bytes server→client,
// 6 client→server with the mask, for frames under 126 bytes).
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { Server } from 'socket.io';
import { io } from 'socket.io-client';
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import { decodeClientFrame, decodeServerFrame } from 'postbox/protocol';
import { createServer } from 'postbox/server';
import { memoryServerStore } from 'postbox/server/memory';
import { memoryNetwork } from 'postbox/transport/memory';
import { sleep } from '../lib/child.mjs';

const ALICE = 'alice.4f1c2e9a7b'; // 16 characters
const BOB = 'bob.4f1c2e9a7b3d'; // 16 characters
const PAYLOAD = 100;
const MSG_ID = '01JDQ4M7X8K2V9TZP3N6B5C0RA'; // a ULID, as postbox clients make (26 characters)
const wsHeader = (bytes, toServer) => (bytes < 126 ? 2 : bytes < 65536 ? 4 : 10) + (toServer ? 4 : 0);

async function until(fn, ms = 5000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('wire: exchange did not complete');
    await sleep(5);
  }
}

async function postbox() {
  const net = memoryNetwork();
  const server = createServer({
    store: memoryServerStore(),
    authenticate: (c) => ({ user: c, device: 'd' }),
  });
  await server.listen(net.server);
  const open = (user) => {
    const c = createClient({ transport: net.client(user), store: memoryClientStore(), credentials: user });
    return new Promise((resolve) => c.on('connection', (s) => s === 'open' && resolve(c)));
  };
  const [a, b] = await Promise.all([open(ALICE), open(BOB)]);
  const frames = [];
  net.intercept((data, dir, link) => {
    const t = (dir === 'toServer' ? decodeClientFrame(data) : decodeServerFrame(data)).t;
    frames.push({ dir, link: link.name, bytes: data.byteLength, t });
    return 'pass';
  });
  let delivered = false;
  let received = false;
  a.on('status', (s) => (delivered ||= s.status === 'delivered'));
  b.on('message', () => (received = true));
  await a.send(BOB, new Uint8Array(PAYLOAD).fill(7));
  // Done when alice has acked the `delivered` status (the last frame of the exchange).
  await until(() => delivered && received && frames.some((f) => f.link === ALICE && f.t === 'ack'));
  await sleep(50);
  await Promise.all([a.close(), b.close()]);
  await server.close();
  const bytes = frames.reduce((s, f) => s + f.bytes, 0) - 2 * PAYLOAD;
  const framed = bytes + frames.reduce((s, f) => s + wsHeader(f.bytes, f.dir === 'toServer'), 0);
  return {
    bytes,
    framed,
    frames: frames.length,
    detail: frames.map(
      (f) =>
        `${f.t}(${f.link === ALICE ? 'alice' : 'bob'} ${f.dir === 'toServer' ? '→' : '←'} server) ${f.bytes}`,
    ),
  };
}

async function socketio() {
  const http = createHttpServer();
  const ioServer = new Server(http, { serveClient: false });
  const users = new Map();
  const packets = [];
  let counting = false;
  ioServer.on('connection', (socket) => {
    const me = socket.handshake.auth.u;
    users.set(me, socket);
    const count = (dir) => (p) => {
      if (!counting || p.type === 'ping' || p.type === 'pong') return;
      const data = typeof p.data === 'string' ? p.data : '';
      packets.push({ dir, user: me, bytes: 1 + Buffer.byteLength(data), data: data.slice(0, 60) });
    };
    socket.conn.on('packet', count('in'));
    socket.conn.on('packetCreate', count('out'));
    // Send (acked after it is accepted), deliver to the recipient (acked by it), then tell the
    // sender "delivered" (acked by it): the exchange postbox performs.
    socket.on('m', (to, id, body, ack) => {
      ack();
      users.get(to).emit('m', me, id, body, () => {
        users.get(me).emit('d', id, () => {});
      });
    });
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${http.address().port}`;
  const connect = async (u) => {
    const s = io(url, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { u } });
    await once(s, 'connect');
    return s;
  };
  const [a, b] = await Promise.all([connect(ALICE), connect(BOB)]);
  let done = false;
  b.on('m', (_from, _id, _body, ack) => ack());
  a.on('d', (_id, ack) => {
    ack();
    done = true;
  });
  counting = true;
  await a.emitWithAck('m', BOB, MSG_ID, 'x'.repeat(PAYLOAD));
  await until(() => done && packets.filter((p) => p.dir === 'in' && p.user === ALICE).length >= 2);
  await sleep(50);
  a.disconnect();
  b.disconnect();
  ioServer.close();
  const bytes = packets.reduce((s, p) => s + p.bytes, 0) - 2 * PAYLOAD;
  const framed = bytes + packets.reduce((s, p) => s + wsHeader(p.bytes, p.dir === 'in'), 0);
  return {
    bytes,
    framed,
    frames: packets.length,
    detail: packets.map((p) => `${p.dir === 'in' ? '→' : '←'} ${p.user.split('.')[0]} ${p.bytes}: ${p.data}`),
  };
}

/**
 * XMPP, written out. Counted generously for XMPP: no `<r/>` requests (acks may be sent
 * unsolicited), the shortest resource (`/d`), no id on the receipt message (optional in
 * XEP-0184), no whitespace between stanzas.
 */
function xmpp() {
  const dom = 'example.com';
  const a = `${ALICE}@${dom}`;
  const b = `${BOB}@${dom}`;
  const body = 'x'.repeat(PAYLOAD);
  const sm = (h) => `<a xmlns='urn:xmpp:sm:3' h='${h}'/>`;
  const stanzas = [
    [
      'alice → server',
      `<message to='${b}' id='${MSG_ID}' type='chat'><body>${body}</body><request xmlns='urn:xmpp:receipts'/></message>`,
    ],
    ['server → alice', sm(1)],
    [
      'server → bob',
      `<message from='${a}/d' to='${b}/d' id='${MSG_ID}' type='chat'><body>${body}</body><request xmlns='urn:xmpp:receipts'/></message>`,
    ],
    ['bob → server', sm(1)],
    ['bob → server', `<message to='${a}/d'><received xmlns='urn:xmpp:receipts' id='${MSG_ID}'/></message>`],
    ['server → bob', sm(2)],
    [
      'server → alice',
      `<message from='${b}/d' to='${a}/d'><received xmlns='urn:xmpp:receipts' id='${MSG_ID}'/></message>`,
    ],
    ['alice → server', sm(2)],
  ];
  const bytes = stanzas.reduce((s, [, x]) => s + Buffer.byteLength(x), 0) - 2 * PAYLOAD;
  return {
    bytes,
    framed: bytes,
    frames: stanzas.length,
    detail: stanzas.map(([w, x]) => `${w} ${Buffer.byteLength(x)}: ${x.slice(0, 70)}…`),
  };
}

/**
 * MQTT 3.1.1, computed from the packet layout (fixed header + remaining length, topic, packet
 * id): QoS 1 PUBLISH to `u/<bob>` + PUBACK each hop, then bob publishes a receipt (the message
 * id) to `u/<alice>`, again PUBLISH + PUBACK each hop. No broker-side statuses exist in MQTT.
 */
function mqtt() {
  const publish = (topic, payload) => {
    const rest = 2 + topic.length + 2 + payload;
    return 1 + (rest < 128 ? 1 : 2) + rest;
  };
  const puback = 4;
  const msg = publish(`u/${BOB}`, PAYLOAD);
  const rcpt = publish(`u/${ALICE}`, MSG_ID.length);
  const bytes = 2 * (msg + puback) + 2 * (rcpt + puback) - 2 * PAYLOAD;
  return {
    bytes,
    framed: bytes,
    frames: 8,
    detail: [`publish ${msg} ×2, puback 4 ×4, receipt publish ${rcpt} ×2`],
  };
}

export async function run() {
  const systems = { postbox: await postbox(), socketio: await socketio(), xmpp: xmpp(), mqtt: mqtt() };
  const results = [];
  const detail = {};
  for (const [system, r] of Object.entries(systems)) {
    results.push({ system, metric: 'bytes_per_message', value: r.bytes, unit: 'B' });
    results.push({ system, metric: 'bytes_with_ws_framing', value: r.framed, unit: 'B' });
    results.push({ system, metric: 'frames_per_message', value: r.frames, unit: 'frames' });
    detail[system] = r.detail;
  }
  return { results, detail };
}
