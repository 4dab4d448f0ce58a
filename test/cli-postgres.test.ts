// `postbox serve --store postgres://…`: the command as a user runs it, on the real PostgreSQL
// (a fresh schema per run, dropped afterwards), and messages still survive a kill -9.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createClient } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { killAll, run } from './fixtures/proc.js';
import { PG_URL, pgUnreachable, servicesRequired } from './fixtures/services.js';
import { until } from './fixtures/util.js';

const reason = await pgUnreachable();
const schema = `pb_cli_${randomBytes(4).toString('hex')}`;
afterEach(() => killAll());
afterAll(async () => {
  if (reason) return;
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await c.end();
});

async function serve() {
  const p = run([
    'dist/cli/main.js',
    'serve',
    '--port',
    '0',
    '--insecure-dev-auth',
    '--store',
    `${PG_URL}?schema=${schema}`,
  ]);
  const line = await p.waitFor('postbox listening on ');
  return { p, url: line.split(' ')[3]! };
}

if (reason && servicesRequired()) {
  describe('postbox serve --store postgres://', () => {
    it('needs PostgreSQL (POSTBOX_REQUIRE_SERVICES is set, so a skip would be a failure)', () => {
      throw new Error(reason);
    });
  });
} else if (reason) {
  console.warn(`postbox serve --store postgres:// tests SKIPPED: ${reason}`);
  describe.skip(`postbox serve --store postgres:// (skipped: ${reason})`, () => {
    it('delivers through PostgreSQL', () => {});
  });
} else {
  describe('postbox serve --store postgres://', () => {
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
}
