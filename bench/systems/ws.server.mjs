// Raw `ws` relay: the ceiling for a WebSocket server. Client i connects with `?u=i`; a frame
// `[u16 to][payload]` is forwarded to client `to` as `[u16 from][payload]`. No acks, no storage.
import { once } from 'node:events';
import { WebSocketServer } from 'ws';

export async function start() {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  const clients = new Map();
  wss.on('connection', (ws, req) => {
    const me = Number(new URL(req.url, 'http://x').searchParams.get('u'));
    clients.set(me, ws);
    ws.on('message', (data) => {
      const to = data.readUInt16LE(0);
      data.writeUInt16LE(me, 0);
      clients.get(to)?.send(data);
    });
    ws.on('close', () => {
      if (clients.get(me) === ws) clients.delete(me);
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/`,
    connections: () => clients.size,
  };
}
