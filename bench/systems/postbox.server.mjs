// The postbox server as an app embeds it: the engine over the WebSocket transport, with the
// memory store or the SQLite store (durable: committed and synced before the `ok`). Every
// option is the default (but `linking`, when a scenario asks); authentication believes the
// credential (a local bench only).
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { createServer } from 'postbox/server';
import { websocketServerTransport } from 'postbox/transport/websocket';

export async function start({ store: kind = 'memory', dataDir, preRegister, linking, trace, timelines }) {
  let store;
  if (kind === 'sqlite') {
    const { sqliteServerStore } = await import('postbox/server/sqlite');
    mkdirSync(dataDir, { recursive: true });
    store = sqliteServerStore({ path: path.join(dataDir, 'postbox.sqlite'), walFlush: 'background' });
  } else {
    const { memoryServerStore } = await import('postbox/server/memory');
    store = memoryServerStore();
  }
  // latency-light: per-message timelines (postbox.trace.mjs).
  const traced = timelines ? (await import('./postbox.trace.mjs')).instrument(store) : undefined;
  if (traced) store = traced.store;
  const server = createServer({
    store,
    authenticate: (cred) => ({ user: cred, device: 'd' }),
    ...(linking ? { linking } : {}),
    // Benchmarks make groups of synthetic users and send as fast as they can: no invites, and
    // budgets far above any scenario (the abuse bench measures the defaults).
    groupConsent: 'open',
    costBudgets: { device: { perSecond: 1e9, burst: 1e9 }, user: { perSecond: 1e9, burst: 1e9 } },
    // The delivery trace is on by default (a memory ring); trace-cost turns it off to price it.
    ...(trace === false ? { trace: false } : {}),
  });
  server.on('error', (e) => process.stderr.write(`postbox server error: ${e?.stack ?? e}\n`));
  // The idle scenario opens ~19k connections from one address.
  const transport = websocketServerTransport({
    port: 0,
    host: '127.0.0.1',
    maxConnectionsPerAddress: 1_000_000,
  });
  await server.listen(transport);
  if (preRegister) {
    for (let j = 0; j < preRegister.count; j++) await server.registerDevice(`${preRegister.prefix}${j}`, 'd');
  }
  return {
    url: `ws://127.0.0.1:${transport.address.port}/postbox`,
    connections: () => server.connectionCount,
    ...(traced ? { trace: traced.request } : {}),
  };
}
