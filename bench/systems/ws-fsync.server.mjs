// `ws` relay with a group-committed log: every frame that arrived in the same turn of the
// event loop is appended to one file and made durable with a single fdatasync; only then are
// the senders acked and the messages forwarded. The simplest honest "ack means durable" server.
// Client frame: [u16 to][u32 req][payload]; ack: [u32 req]; delivery: [u16 from][payload].
import { closeSync, fdatasyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { WebSocketServer } from 'ws';

export async function start({ dataDir }) {
  mkdirSync(dataDir, { recursive: true });
  const fd = openSync(path.join(dataDir, 'ws-fsync.log'), 'a');
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  const clients = new Map();
  let batch = [];
  let scheduled = false;

  function flush() {
    scheduled = false;
    const items = batch;
    batch = [];
    const parts = [];
    for (const it of items) {
      const h = Buffer.allocUnsafe(2);
      h.writeUInt16LE(it.from, 0);
      parts.push(h, it.data);
    }
    writeSync(fd, Buffer.concat(parts));
    fdatasyncSync(fd);
    for (const { ws, from, data } of items) {
      ws.send(data.subarray(2, 6));
      const to = data.readUInt16LE(0);
      const fwd = Buffer.from(data.subarray(4));
      fwd.writeUInt16LE(from, 0);
      clients.get(to)?.send(fwd);
    }
  }

  wss.on('connection', (ws, req) => {
    const me = Number(new URL(req.url, 'http://x').searchParams.get('u'));
    clients.set(me, ws);
    ws.on('message', (data) => {
      batch.push({ ws, from: me, data });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
    ws.on('close', () => {
      if (clients.get(me) === ws) clients.delete(me);
    });
  });
  process.on('exit', () => closeSync(fd));
  return { url: `ws://127.0.0.1:${wss.address().port}/`, connections: () => clients.size };
}
