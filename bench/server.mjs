// Child process: one server under test. Started by run.mjs (pinned to the server core); answers
// `cpu` (process.cpuUsage) and `mem` (after a full GC) so the orchestrator can measure it.
//   node --expose-gc bench/server.mjs '{"system":"ws","options":{…}}'
import { fail, onRequest, sleep, tell } from './lib/child.mjs';

const SERVERS = {
  ws: './systems/ws.server.mjs',
  'ws-fsync': './systems/ws-fsync.server.mjs',
  socketio: './systems/socketio.server.mjs',
  'postbox-memory': './systems/postbox.server.mjs',
  'postbox-sqlite': './systems/postbox.server.mjs',
  // The same servers with the delivery trace off (`trace: false`), for its cost (trace-cost).
  'postbox-memory-notrace': './systems/postbox.server.mjs',
  'postbox-sqlite-notrace': './systems/postbox.server.mjs',
};
// Scenarios that need a different server for a peer (`options.variant`); postbox serves them all.
const VARIANTS = {
  fanout: {
    ws: './systems/ws.fanout.server.mjs',
    socketio: './systems/socketio.fanout.server.mjs',
  },
};

try {
  const { system, options = {} } = JSON.parse(process.argv[2]);
  const store = system.startsWith('postbox-sqlite') ? 'sqlite' : 'memory';
  const mod = await import(VARIANTS[options.variant]?.[system] ?? SERVERS[system]);
  const server = await mod.start({
    ...options,
    store,
    ...(system.endsWith('-notrace') ? { trace: false } : {}),
  });
  onRequest('cpu', () => ({ cpu: process.cpuUsage() }));
  onRequest('mem', async () => {
    // Two full collections, with a pause for finalizers, so only live memory is counted.
    for (let i = 0; i < 2; i++) {
      globalThis.gc?.();
      await sleep(50);
    }
    return { mem: process.memoryUsage(), connections: server.connections() };
  });
  // Servers that trace messages (latency-light): start and end a window, answer what was seen.
  onRequest('trace', (m) => ({ trace: server.trace?.(m.trace) }));
  tell({ type: 'ready', url: server.url });
} catch (e) {
  fail(e);
}
