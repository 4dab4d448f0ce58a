// Socket.IO group fan-out with rooms, as a user would build it: members `join` a room, the
// sender's `g` event is broadcast with `socket.to(room).emit(...)` (every member but the sender;
// Socket.IO encodes the packet once for the whole room). Nothing is stored, nothing acked.
import { createServer } from 'node:http';
import { Server } from 'socket.io';

export async function start() {
  const http = createServer();
  const io = new Server(http, { serveClient: false, perMessageDeflate: false });
  let open = 0;
  io.on('connection', (socket) => {
    open++;
    socket.on('join', (g, ack) => {
      socket.join(`g${g}`);
      if (typeof ack === 'function') ack();
    });
    socket.on('g', (g, body) => {
      socket.to(`g${g}`).emit('m', body);
    });
    socket.on('disconnect', () => open--);
  });
  await new Promise((r) => http.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${http.address().port}`, connections: () => open };
}
