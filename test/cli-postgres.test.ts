// `postbox serve --store postgres://…`: the command as a user runs it, on the real PostgreSQL
// (a fresh schema per run, dropped afterwards), and messages still survive a kill -9.
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, expect, it } from 'vitest';
import { createClient } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { serve as serveProc } from './fixtures/outage.js';
import { killAll } from './fixtures/proc.js';
import { describeWithServices, dropSchema, PG_URL, pgUnreachable } from './fixtures/services.js';
import { until } from './fixtures/util.js';

const reason = await pgUnreachable();
const schema = `pb_cli_${randomBytes(4).toString('hex')}`;
afterEach(() => killAll());
afterAll(async () => {
  if (!reason) await dropSchema(schema);
});

const serve = () => serveProc(['--store', `${PG_URL}?schema=${schema}`]);

describeWithServices('postbox serve --store postgres://', reason, () => {
  it(
    'delivers through PostgreSQL, and an acked message survives a kill -9 of the server',
    { timeout: 60_000 },
    async () => {
      let { p, url } = await serve();
      const open = (user: string) =>
        createClient({
          transport: websocketClientTransport({ url: () => url }),
          store: memoryClientStore(),
          credentials: `${user}/d1`,
          backoffBaseMs: 50,
          backoffMaxMs: 500,
        });
      const alice = open('alice');
      const statuses = new Map<string, string>();
      alice.on('status', (s) => statuses.set(s.id, s.status));
      // Bob has a device (and an inbox) before he goes offline.
      const bob0 = open('bob');
      await until('bob online', () => bob0.state === 'open');
      await bob0.close();
      const ids = await Promise.all(
        [1, 2, 3].map((i) => alice.send('bob', new TextEncoder().encode(`m${i}`))),
      );
      await until('acked', () => ids.every((id) => statuses.get(id) === 'sent'), 20_000);
      p.proc.kill('SIGKILL');
      await p.exited;
      ({ p, url } = await serve());
      const bob = open('bob');
      const got: string[] = [];
      bob.on('message', (m) => got.push(new TextDecoder().decode(m.body)));
      await until('bob has them', () => got.length === 3, 20_000);
      expect(got).toEqual(['m1', 'm2', 'm3']);
      await alice.close();
      await bob.close();
    },
  );
});
