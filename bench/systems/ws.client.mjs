// Load side of the raw `ws` relay (see ws.server.mjs). Delivery only: the relay acks nothing.
import WebSocket from 'ws';
import { openMany, tagOf, TAG_OFFSET_WS } from './common.mjs';

function open(url, i, onDeliver) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?u=${i}`, { perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    if (onDeliver) ws.on('message', (d) => onDeliver(i, tagOf(d, TAG_OFFSET_WS)));
  });
}

export const capabilities = { ack: false };

export async function connect({ url, n, size, onDeliver }) {
  const socks = await openMany(n, (i) => open(url, i, onDeliver));
  return {
    send(i, to, tag) {
      const b = Buffer.alloc(2 + size);
      b.writeUInt16LE(to, 0);
      b.writeUInt32LE(tag, 2);
      socks[i].send(b);
    },
    async close() {
      for (const s of socks) s.terminate();
    },
  };
}

export async function openIdle({ url, from, count }) {
  const socks = await openMany(count, (k) => open(url, from + k));
  return {
    async close() {
      for (const s of socks) s.terminate();
    },
  };
}

/**
 * Group fan-out (see ws.fanout.server.mjs): `n` sockets; `group(g, members)` makes sockets
 * 0…members-1 join group `g` and returns its sender (socket 0).
 */
export async function fanoutConnect({ url, n, size, onDeliver }) {
  const joins = new Map();
  const socks = await openMany(
    n,
    (i) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`${url}?u=${i}`, { perMessageDeflate: false });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
        ws.on('message', (d) => {
          if (d[0] === 0x02) onDeliver(i, d.readUInt32LE(3));
          else if (d[0] === 0x03) joins.get(`${i}:${d.readUInt16LE(1)}`)?.();
        });
      }),
  );
  return {
    async group(g, members) {
      await Promise.all(
        socks.slice(0, members).map(
          (s, i) =>
            new Promise((resolve) => {
              joins.set(`${i}:${g}`, resolve);
              const b = Buffer.alloc(3);
              b[0] = 0x01;
              b.writeUInt16LE(g, 1);
              s.send(b);
            }),
        ),
      );
      return {
        send(tag) {
          const b = Buffer.alloc(3 + size);
          b[0] = 0x02;
          b.writeUInt16LE(g, 1);
          b.writeUInt32LE(tag, 3);
          socks[0].send(b);
        },
      };
    },
    async close() {
      for (const s of socks) s.terminate();
    },
  };
}
