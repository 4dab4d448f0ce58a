import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeWorld, text } from './helpers.js';

describe('server shutdown', () => {
  it('close() leaves no timer of the server running, so an embedding process exits at once', async () => {
    const world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await alice.client.send('bob', text('hi'));
    await world.advance(200);
    expect(bob.messages).toHaveLength(1);
    // Clients first (their own timers go with them), then the server: what remains is the server's.
    await alice.client.close();
    await bob.client.close();
    await world.advance(10);
    await world.server.close();
    expect(world.clock.pendingTimers).toBe(0);
  });
});

describe('server shutdown in a real process', () => {
  it('an embedding process exits once it closed its server, store and clients: nothing of postbox keeps it alive', () => {
    // The README's embedding, on the memory store, with a presence debounce of a minute (a
    // pending offline announcement used to hold the process for that long). An unref'd timer
    // cannot keep the process alive; it only speaks if something else does for 10 s.
    const app = `
      import http from 'node:http';
      import { createServer } from 'postbox/server';
      import { memoryServerStore } from 'postbox/server/memory';
      import { createClient } from 'postbox/client';
      import { memoryClientStore } from 'postbox/client/memory';
      import { websocketServerTransport, websocketClientTransport } from 'postbox/transport/websocket';
      const store = memoryServerStore();
      const server = createServer({
        store,
        authenticate: (c) => ({ user: String(c), device: 'd1' }),
        presenceDebounceMs: 60_000,
      });
      const httpServer = http.createServer();
      await server.listen(websocketServerTransport({ server: httpServer, path: '/postbox' }));
      await new Promise((r) => httpServer.listen(0, '127.0.0.1', r));
      const url = 'ws://127.0.0.1:' + httpServer.address().port + '/postbox';
      const open = (user) => createClient({ transport: websocketClientTransport({ url }), store: memoryClientStore(), credentials: user });
      const [alice, bob] = [open('alice'), open('bob')];
      await Promise.all([alice.connected(), bob.connected()]);
      const got = new Promise((r) => bob.on('message', r));
      await alice.send('bob', new Uint8Array([1]));
      await got;
      await Promise.all([alice.close(), bob.close()]);
      await server.close();
      await store.close();
      await new Promise((r) => httpServer.close(r));
      setTimeout(() => console.log('still alive 10 s after shutdown'), 10_000).unref();
      process.on('exit', () => console.log('exited'));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', app], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(out.trim().split('\n')).toEqual(['exited']);
  });

  it('a script whose last work is closing its SQLite store runs on after the close: the checkpoint worker holds the process until it has exited', () => {
    // The WAL checkpoint worker is unref'd while it works (it never keeps a server alive); it was
    // also unref'd while it closed, so a script awaiting store.close() found its event loop empty
    // and exited with code 13 before the close resolved, skipping what came after it.
    const dir = mkdtempSync(join(tmpdir(), 'postbox-close-'));
    try {
      const app = `
        import { sqliteServerStore } from 'postbox/server/sqlite';
        const store = sqliteServerStore({ path: ${JSON.stringify(join(dir, 'db.sqlite'))}, walFlush: 'background' });
        await store.registerDevice({ user: 'alice', device: 'phone' }, Date.now());
        await store.close();
        console.log('after close');
      `;
      const out = execFileSync(process.execPath, ['--input-type=module', '-e', app], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(out.trim()).toBe('after close');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
