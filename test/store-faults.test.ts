// The stores when what is under them fails (issue 15), in process: the PostgreSQL store's pool
// behind a relay that resets or black-holes its connections, and the health checks (`ping`) the
// engine probes with while a store fails.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, expect, it } from 'vitest';
import type { ServerStore } from '../src/server/store.js';
import { openPostgresServerStore } from '../src/server/stores/postgres.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { describeWithServices, dropSchema, PG_URL, pgUnreachable } from './fixtures/services.js';
import { startTcpProxy, type TcpProxy } from './fixtures/tcp-proxy.js';
import { sleep } from './fixtures/util.js';

const reason = await pgUnreachable();
const schema = `pb_faults_${randomBytes(4).toString('hex')}`;
const open: Array<{ store: ServerStore; relay?: TcpProxy }> = [];
afterEach(async () => {
  for (const { store, relay } of open.splice(0)) {
    await relay?.close();
    await store.close();
  }
});
afterAll(async () => {
  if (!reason) await dropSchema(schema);
});

/** A PostgreSQL store whose connections go through a relay, and what its pool reported. */
async function storeBehindRelay(queryTimeoutMs = 10_000) {
  const relay = await startTcpProxy(Number(new URL(PG_URL).port || 5432));
  const url = new URL(PG_URL);
  url.port = String(relay.port);
  const errors: unknown[] = [];
  const store = await openPostgresServerStore({
    connectionString: url.toString(),
    schema,
    poolSize: 2,
    connectTimeoutMs: 500,
    queryTimeoutMs,
    onError: (e) => errors.push(e),
  });
  open.push({ store, relay });
  return { store, relay, errors };
}

it('the SQLite store’s ping refuses a database that cannot grow, and answers again once it can', async () => {
  const db = new Database(':memory:');
  const store = sqliteServerStore({ database: db });
  open.push({ store });
  await store.ping!();
  db.exec('VACUUM'); // no free pages left to reuse (migrations that rebuild tables leave some)
  const pages = Number(db.pragma('page_count', { simple: true }));
  db.pragma(`max_page_count = ${pages}`);
  await expect(store.ping!()).rejects.toMatchObject({ code: 'SQLITE_FULL' });
  db.pragma(`max_page_count = ${pages + 1000}`);
  await store.ping!();
});

describeWithServices('the PostgreSQL store when its connections fail', reason, () => {
  it('a reset of idle connections is reported, not thrown, and the next calls work on fresh ones', async () => {
    const { store, relay, errors } = await storeBehindRelay();
    await store.registerDevice({ user: 'alice', device: 'a' }, 1);
    await store.devices('alice');
    relay.cutAll();
    await sleep(200);
    expect(errors.length).toBeGreaterThan(0);
    expect(await store.devices('alice')).toEqual(['a']);
    await store.ping!();
  });

  it('a call on a black-holed database rejects within the query timeout, and calls work again once it heals', async () => {
    const { store, relay } = await storeBehindRelay(300);
    await store.registerDevice({ user: 'bob', device: 'b' }, 1);
    relay.partition();
    await expect(store.devices('bob')).rejects.toThrow();
    await expect(store.registerDevice({ user: 'bob', device: 'b2' }, 2)).rejects.toThrow();
    await expect(store.ping!()).rejects.toThrow();
    relay.heal();
    // The silenced connections were dropped by their timeouts; new ones carry the calls.
    await store.registerDevice({ user: 'bob', device: 'b2' }, 3);
    expect(await store.devices('bob')).toEqual(['b', 'b2']);
  });
});
