// Socket.IO relay: `emitWithAck('m', to, body)` is forwarded to user `to` and acked at once.
// A recipient may answer with `d` (delivered), forwarded to the sender the same way. Nothing is stored. Users are found in a Map (faster than rooms; the fairest setup for it).
import { createServer } from 'node:http';
import { Server } from 'socket.io';

export async function start() {
  const http = createServer();
  const io = new Server(http, { serveClient: false, perMessageDeflate: false });
  const users = new Map();
  io.on('connection', (socket) => {
    const me = socket.handshake.auth.u;
    users.set(me, socket);
    socket.on('m', (to, body, ack) => {
      users.get(to)?.emit('m', me, body);
      if (typeof ack === 'function') ack();
    });
    socket.on('d', (to, tag) => users.get(to)?.emit('d', tag));
    socket.on('disconnect', () => {
      if (users.get(me) === socket) users.delete(me);
    });
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}`, connections: () => users.size };
}
