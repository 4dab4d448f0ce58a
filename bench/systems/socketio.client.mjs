// Load side of the Socket.IO relay (see socketio.server.mjs). The 100-byte message is a string
// (Socket.IO's fast path: binary would add an attachment frame per message).
import { io } from 'socket.io-client';
import { openMany } from './common.mjs';

export const capabilities = { ack: true };

// With `onStatus`, a recipient answers each message with a `d` event that the server relays to
// its sender: the Socket.IO way to show ✓✓ (latency-light).
function open(url, i, onDeliver, onStatus) {
  return new Promise((resolve, reject) => {
    const s = io(url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      auth: { u: i },
    });
    s.once('connect', () => resolve(s));
    s.once('connect_error', reject);
    if (onDeliver) {
      s.on('m', (from, body) => {
        const tag = parseInt(body, 36);
        onDeliver(i, tag);
        if (onStatus) s.emit('d', from, tag);
      });
    }
    if (onStatus) s.on('d', (tag) => onStatus(i, tag));
  });
}

export async function connect({ url, n, size, onDeliver, onAck, onStatus, receipts }) {
  const socks = await openMany(n, (i) => open(url, i, onDeliver, receipts ? onStatus : undefined));
  return {
    send(i, to, tag) {
      socks[i].emitWithAck('m', to, tag.toString(36).padEnd(size, '-')).then(() => onAck(i, tag));
    },
    async close() {
      for (const s of socks) s.disconnect();
    },
  };
}

export async function openIdle({ url, from, count }) {
  const socks = await openMany(count, (k) => open(url, from + k));
  return {
    async close() {
      for (const s of socks) s.disconnect();
    },
  };
}

/**
 * Group fan-out (see socketio.fanout.server.mjs): `n` sockets; `group(g, members)` makes sockets
 * 0…members-1 join room `g` and returns its sender (socket 0).
 */
export async function fanoutConnect({ url, n, size, onDeliver }) {
  const socks = await openMany(n, async (i) => {
    const s = await open(url, i);
    s.on('m', (body) => onDeliver(i, parseInt(body, 36)));
    return s;
  });
  return {
    async group(g, members) {
      await Promise.all(socks.slice(0, members).map((s) => s.emitWithAck('join', g)));
      return {
        send(tag) {
          socks[0].emit('g', g, tag.toString(36).padEnd(size, '-'));
        },
      };
    },
    async close() {
      for (const s of socks) s.disconnect();
    },
  };
}
