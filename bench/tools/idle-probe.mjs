// Heap per idle postbox connection, quickly: the server (memory store, WebSocket) in this process,
// N postbox clients in a child; `snap` also writes a heap snapshot to /tmp/heap/idle.heapsnapshot.
//   node --expose-gc bench/tools/idle-probe.mjs [N] [snap]
import { fork } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import v8 from 'node:v8';
import { createServer } from 'postbox/server';
import { memoryServerStore } from 'postbox/server/memory';
import { websocketServerTransport } from 'postbox/transport/websocket';
const N = Number(process.argv[2] ?? 2000);
if (process.argv[3] === 'child') {
  const { createClient } = await import('postbox/client');
  const { memoryClientStore } = await import('postbox/client/memory');
  const { websocketClientTransport } = await import('postbox/transport/websocket');
  const url = process.argv[4];
  let open = 0;
  for (let i = 0; i < N; i++) {
    const c = createClient({
      transport: websocketClientTransport({ url }),
      store: memoryClientStore(),
      credentials: `u${i}`,
    });
    c.on('connection', (s) => {
      if (s === 'open' && ++open === N) process.send('ready');
    });
    if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
  }
} else {
  const server = createServer({
    store: memoryServerStore(),
    authenticate: (c) => ({ user: c, device: 'd' }),
  });
  const t = websocketServerTransport({ port: 0, maxConnectionsPerAddress: 100000 });
  await server.listen(t);
  const snap = () => {
    for (let i = 0; i < 3; i++) globalThis.gc();
    return process.memoryUsage().heapUsed;
  };
  const before = snap();
  const child = fork(new URL(import.meta.url).pathname, [String(N), 'child', t.url]);
  await new Promise((r) => child.on('message', r));
  await new Promise((r) => setTimeout(r, 500));
  const after = snap();
  console.log(`heap per connection ${((after - before) / N / 1024).toFixed(2)} KB`);
  if (process.argv[3] === 'snap') {
    mkdirSync('/tmp/heap', { recursive: true });
    v8.writeHeapSnapshot('/tmp/heap/idle.heapsnapshot');
  }
  child.kill();
  process.exit(0);
}
