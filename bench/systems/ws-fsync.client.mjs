// Load side of the group-commit relay (see ws-fsync.server.mjs).
import WebSocket from 'ws';
import { openMany, tagOf, TAG_OFFSET_WS } from './common.mjs';

export const capabilities = { ack: true };

export async function connect({ url, n, size, onDeliver, onAck }) {
  const socks = await openMany(
    n,
    (i) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`${url}?u=${i}`, { perMessageDeflate: false });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
        ws.on('message', (d) => {
          // A 4-byte frame is an ack (the request id is the tag); anything longer is a delivery.
          if (d.length === 4) onAck(i, d.readUInt32LE(0));
          else onDeliver(i, tagOf(d, TAG_OFFSET_WS));
        });
      }),
  );
  return {
    send(i, to, tag) {
      const b = Buffer.alloc(6 + size);
      b.writeUInt16LE(to, 0);
      b.writeUInt32LE(tag, 2);
      b.writeUInt32LE(tag, 6);
      socks[i].send(b);
    },
    async close() {
      for (const s of socks) s.terminate();
    },
  };
}
