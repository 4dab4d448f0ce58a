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
