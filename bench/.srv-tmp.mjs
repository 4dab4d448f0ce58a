import { createServer } from 'postbox/server';
import { monitorEventLoopDelay } from 'node:perf_hooks';
const h = monitorEventLoopDelay({ resolution: 1 });
h.enable();
import { memoryServerStore } from 'postbox/server/memory';
import { websocketServerTransport } from 'postbox/transport/websocket';
const server = createServer({ store: memoryServerStore(), authenticate: (c) => ({ user: c, device: 'd' }) });
const t = websocketServerTransport({ port: 0, host: '127.0.0.1' });
await server.listen(t);
let off = 0;
const codes = {};
server.on('offline', (_d, code) => {
  off++;
  codes[code] = (codes[code] ?? 0) + 1;
});
console.log('URL', `ws://127.0.0.1:${t.address.port}/postbox`);
setTimeout(() => {
  console.log(
    'server loop delay max',
    h.max / 1e6,
    'p99',
    h.percentile(99) / 1e6,
    'p999',
    h.percentile(99.9) / 1e6,
  );
  console.log('offline', off, JSON.stringify(codes));
  process.exit(0);
}, 9000);
