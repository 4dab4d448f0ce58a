// Raw `ws` group fan-out: the floor. The server keeps each group's member sockets in a list and
// loops `socket.send` over them (every member but the sender). No acks, no storage.
// Frames: join `[0x01][u16 group]` → `[0x03][u16 group]` once joined;
//         send `[0x02][u16 group][payload]` → the same bytes to every other member.
import { once } from 'node:events';
import { WebSocketServer } from 'ws';

export async function start() {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  const groups = new Map();
  let open = 0;
  wss.on('connection', (ws) => {
    open++;
    const joined = [];
    ws.on('message', (data) => {
      const g = data.readUInt16LE(1);
      if (data[0] === 0x02) {
        const members = groups.get(g);
        if (!members) return;
        for (let k = 0; k < members.length; k++) if (members[k] !== ws) members[k].send(data);
      } else if (data[0] === 0x01) {
        let members = groups.get(g);
        if (!members) groups.set(g, (members = []));
        members.push(ws);
        joined.push(g);
        ws.send(Buffer.from([0x03, data[1], data[2]]));
      }
    });
    ws.on('close', () => {
      open--;
      for (const g of joined) {
        const members = groups.get(g);
        const k = members?.indexOf(ws) ?? -1;
        if (k >= 0) members.splice(k, 1);
      }
    });
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/`, connections: () => open };
}
