import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createClient } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { memoryTraceStore, type TraceEvent, type TraceStore } from '../src/server/trace.js';
import { sqliteTraceStore } from '../src/server/stores/sqlite-trace.js';
import { openPostgresTraceStore } from '../src/server/stores/postgres-trace.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { makeWorld, text, type World } from './helpers.js';
import { killAll, run } from './fixtures/proc.js';
import { describeWithServices, PG_URL, pgUnreachable, scratchSchemas } from './fixtures/services.js';
import { sleep, tempDirs, until } from './fixtures/util.js';

const dirs = tempDirs('trace');
afterAll(() => dirs.removeAll());
const kinds = (events: TraceEvent[]) => events.map((e) => `${e.kind} ${e.device ?? ''}`.trim());
const ALLOWED_KEYS = new Set(['id', 'at', 'kind', 'device', 'detail', 'node']);

describe('the delivery trace answers "what happened to message X"', () => {
  let world: World;
  afterEach(async () => world?.close());

  it('records commit, push and ack per recipient device, and the statuses sent back, in order', async () => {
    world = await makeWorld();
    const alice = await world.device('alice', 'a1');
    await world.device('bob', 'b1');
    await world.device('bob', 'b2', { register: true }).then((d) => d.client.close());
    await world.advance(100);
    const id = await alice.client.send('bob', text('secret words'));
    await world.advance(500);
    const before = kinds(await world.server.trace(id));
    expect(before).toEqual(['committed alice/a1', 'pushed bob/b1', 'acked bob/b1', 'status alice/a1']);
    // The offline device gets it when it comes back: the trace shows that too.
    const bob2 = await world.device('bob', 'b2');
    await world.advance(500);
    expect(bob2.messages.map((m) => m.id)).toEqual([id]);
    const after = await world.server.trace(id);
    expect(kinds(after).slice(4)).toContain('pushed bob/b2');
    expect(kinds(after).slice(4)).toContain('acked bob/b2');
    expect(after.map((e) => e.at)).toEqual([...after.map((e) => e.at)].sort((a, b) => a - b));
    expect(after.find((e) => e.kind === 'status')?.detail).toBe('delivered');
  });

  it('keeps no content: only ids, devices, times and short facts, never a body byte', async () => {
    world = await makeWorld();
    const alice = await world.device('alice', 'a1');
    await world.device('bob', 'b1');
    await world.advance(100);
    const id = await alice.client.send('bob', text('the launch code is 0000'));
    await world.advance(500);
    const events = await world.server.trace(id);
    expect(events.length).toBeGreaterThan(2);
    for (const e of events) for (const k of Object.keys(e)) expect(ALLOWED_KEYS.has(k)).toBe(true);
    expect(JSON.stringify(events)).not.toContain('launch');
  });

  it('a refused send is traced with the code its sender got', async () => {
    world = await makeWorld();
    const alice = await world.device('alice', 'a1');
    await world.advance(100);
    const sent = alice.client.send('nobody-at-all', text('hi'));
    const id = await sent;
    await world.advance(500);
    const events = await world.server.trace(id);
    expect(events.map((e) => [e.kind, e.detail])).toEqual([['refused', 'unknown_recipient']]);
  });

  it('with traceLog, every event is also a structured debug log line', async () => {
    const lines: Array<[string, unknown]> = [];
    const logger = {
      debug: (m: string, d?: unknown) => lines.push([m, d]),
      info() {},
      warn() {},
      error() {},
    };
    world = await makeWorld({ server: { logger, traceLog: true } });
    const alice = await world.device('alice', 'a1');
    await world.device('bob', 'b1');
    await world.advance(100);
    const id = await alice.client.send('bob', text('hi'));
    await world.advance(500);
    const logged = lines.filter(([m, d]) => m === 'trace' && (d as TraceEvent).id === id);
    expect(logged.map(([, d]) => (d as TraceEvent).kind)).toEqual(
      (await world.server.trace(id)).map((e) => e.kind),
    );
  });

  it('trace: false turns it off: nothing is kept', async () => {
    world = await makeWorld({ server: { trace: false } });
    const alice = await world.device('alice', 'a1');
    await world.device('bob', 'b1');
    await world.advance(100);
    const id = await alice.client.send('bob', text('hi'));
    await world.advance(500);
    expect(await world.server.trace(id)).toEqual([]);
  });

  it('the memory trace is a ring: it never holds more than its capacity', async () => {
    const ring = memoryTraceStore({ capacity: 10 });
    for (let i = 0; i < 25; i++) ring.record([{ id: `m${i % 5}`, at: i, kind: 'committed' }]);
    const all = (await Promise.all(['m0', 'm1', 'm2', 'm3', 'm4'].map((id) => ring.query(id)))).flat();
    expect(all).toHaveLength(10);
    expect(Math.min(...all.map((e) => e.at))).toBe(15);
    expect((await ring.query('m0')).map((e) => e.at)).toEqual([15, 20]);
  });
});

/** The table-backed trace stores: kept across reopen, queried by id in order, pruned by age. */
function tableCases(open: (reopen?: boolean) => Promise<TraceStore>) {
  it('keeps events across a reopen and answers by id, oldest first', async () => {
    const t = await open();
    const now = Date.now();
    t.record([
      { id: 'x', at: now + 2, kind: 'acked', device: 'bob/b1' },
      { id: 'x', at: now, kind: 'committed', device: 'alice/a1', detail: '2 devices' },
      { id: 'y', at: now + 1, kind: 'committed', device: 'carol/c1', node: 'n1' },
    ]);
    await t.close();
    const again = await open(true);
    expect(await again.query('x')).toEqual([
      { id: 'x', at: now, kind: 'committed', device: 'alice/a1', detail: '2 devices' },
      { id: 'x', at: now + 2, kind: 'acked', device: 'bob/b1' },
    ]);
    expect(await again.query('y')).toEqual([
      { id: 'y', at: now + 1, kind: 'committed', device: 'carol/c1', node: 'n1' },
    ]);
    expect(await again.query('nope')).toEqual([]);
    await again.close();
  });

  it('events older than the retention are deleted', async () => {
    const t = await open();
    t.record([
      { id: 'old', at: Date.now() - 30 * 24 * 3600_000, kind: 'committed' },
      { id: 'new', at: Date.now(), kind: 'committed' },
    ]);
    // The first write of a store prunes; a second batch makes sure the prune ran after it.
    await t.query('new');
    t.record([{ id: 'old', at: Date.now() - 30 * 24 * 3600_000, kind: 'acked' }]);
    await t.close();
    const again = await open(true);
    expect((await again.query('new')).length).toBe(1);
    expect((await again.query('old')).map((e) => e.kind)).toEqual(['acked']);
    await again.close();
  });
}

describe('the SQLite trace store', () => {
  let path = '';
  tableCases(async (reopen) => {
    if (!reopen) path = join(dirs.make(), 'db.sqlite-trace');
    return sqliteTraceStore({ path });
  });
});

const pgReason = await pgUnreachable();
describeWithServices('the PostgreSQL trace store', pgReason, () => {
  const freshSchema = scratchSchemas('pb_trace');
  let schema = '';
  tableCases(async (reopen) => {
    if (!reopen) schema = freshSchema();
    return openPostgresTraceStore({ connectionString: PG_URL, schema });
  });

  it('gateway nodes that start together on a fresh schema all open it (the DDL runs once, under a lock)', async () => {
    const fresh = freshSchema();
    const stores = await Promise.all(
      Array.from({ length: 6 }, () => openPostgresTraceStore({ connectionString: PG_URL, schema: fresh })),
    );
    expect(stores).toHaveLength(6);
    await Promise.all(stores.map((s) => s.close()));
  });
});

describe('postbox trace ID', () => {
  afterEach(() => killAll());

  it('prints what a running postbox serve recorded about a message', { timeout: 30_000 }, async () => {
    const data = join(dirs.make(), 'db.sqlite');
    const server = run(['dist/cli/main.js', 'serve', '--port', '0', '--data', data, '--insecure-dev-auth']);
    const url = (await server.waitFor('postbox listening on ')).split(' ')[3]!;
    const open = (user: string) =>
      createClient({
        transport: websocketClientTransport({ url }),
        store: memoryClientStore(),
        credentials: `${user}/d1`,
      });
    const alice = open('alice');
    const bob = open('bob');
    const got: string[] = [];
    const ticks: string[] = [];
    bob.on('message', (m) => got.push(m.id));
    alice.on('status', (s) => ticks.push(`${s.id} ${s.status}`));
    await until('both online', () => alice.state === 'open' && bob.state === 'open');
    const id = await alice.send('bob', text('hello'));
    await until('delivered', () => got.includes(id));
    await until('✓✓', () => ticks.includes(`${id} delivered`));
    await alice.close();
    await bob.close();
    // The trace is written in batches (a second at most): ask until the last event is there.
    let out: string[] = [];
    for (let tries = 0; tries < 50; tries++) {
      const p = run(['dist/cli/main.js', 'trace', id, '--data', data]);
      expect(await p.exited).toBe(0);
      out = p.lines;
      if (out.some((l) => l.includes('status') && l.includes('delivered'))) break;
      await sleep(200);
    }
    expect(out.some((l) => l.includes('committed') && l.includes('alice/d1'))).toBe(true);
    expect(out.some((l) => l.includes('pushed') && l.includes('bob/d1'))).toBe(true);
    expect(out.some((l) => l.includes('status') && l.includes('delivered'))).toBe(true);
  });
});
