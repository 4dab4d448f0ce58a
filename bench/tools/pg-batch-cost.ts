// Statements and wall time per append batch of the PostgreSQL server store, by kind of 1:1 item:
// plain messages, end-to-end encrypted messages (one envelope each) and read receipts, 64 items a
// batch from 64 different senders, group messages (each sender to a group of its own), and then
// the 64 readers acking what they got, all in one event-loop turn. What issue 19 (item 3) asks: a batch as a few multi-row
// statements, not round trips per item. The statements are counted on the connections the
// store's transactions check out; times are wall clock (one process, loopback PostgreSQL).
//
//   npx tsx bench/tools/pg-batch-cost.ts [--url URL] [--items 64] [--rounds 6]
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { AppendInput, DeviceAddress } from '../../src/server/store.js';
import { openPostgresServerStore } from '../../src/server/stores/postgres.js';
import { ridOf, upload } from '../../src/testing/key-fixtures.js';
import { countingPool } from '../../test/fixtures/pg-count.js';

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    items: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '6' },
  },
});
const N = Number(values.items);
const rounds = Number(values.rounds);
const pool = new pg.Pool({ connectionString: values.url, max: 4 });
const counted = countingPool(pool);
const schema = `pbbench_batch_${Math.random().toString(36).slice(2, 8)}`;
const store = await openPostgresServerStore({ pool: counted.pool, schema });
const senders: DeviceAddress[] = Array.from({ length: N }, (_, i) => ({ user: `s${i}`, device: 'd' }));
const readers: DeviceAddress[] = Array.from({ length: N }, (_, i) => ({ user: `r${i}`, device: 'd' }));
for (const d of [...senders, ...readers]) {
  await store.registerDevice(d, 1);
  await store.putKeys(d, upload(d, { pre: [1], kyber: [101] }));
}
const body = new Uint8Array(100);
let seq = 0;
const kinds: Record<string, (i: number, r: number) => AppendInput> = {
  plain: (i, r) => ({
    kind: 'msg',
    from: senders[i]!,
    id: `p${r}-${i}`,
    to: readers[i]!.user,
    seq: ++seq,
    body,
  }),
  sealed: (i, r) => ({
    kind: 'msg',
    from: senders[i]!,
    id: `e${r}-${i}`,
    to: readers[i]!.user,
    seq: ++seq,
    body: new Uint8Array(0),
    envelopes: [{ user: readers[i]!.user, device: 'd', rid: ridOf(readers[i]!, 1), body }],
  }),
  receipt: (i, r) => ({
    kind: 'receipt',
    from: readers[i]!,
    id: `c${r}-${i}`,
    to: senders[i]!.user,
    status: 'read',
    ids: [`p${r}-${i}`, `e${r}-${i}`],
  }),
  // Sender i's group with reader i (made below), one message to each group.
  group: (i, r) => ({
    kind: 'msg',
    from: senders[i]!,
    id: `g${r}-${i}`,
    to: `grp${i}`,
    group: true,
    seq: ++seq,
    body,
  }),
};
const groups = senders.map((d, i): AppendInput => ({
  kind: 'group',
  from: d,
  id: `create-${i}`,
  group: `grp${i}`,
  change: { op: 'create', name: `group ${i}`, members: [readers[i]!.user] },
  maxMembers: 1024,
}));
if (!(await store.append(groups, 500)).every((o) => o.ok)) throw new Error('could not create the groups');
const results: Record<string, { statements: number; ms: number[] }> = {};
try {
  for (let round = 0; round < rounds; round++) {
    for (const [kind, make] of Object.entries(kinds)) {
      const batch = Array.from({ length: N }, (_, i) => make(i, round));
      counted.reset();
      const t = process.hrtime.bigint();
      const out = await store.append(batch, 1000 + round);
      const ms = Number(process.hrtime.bigint() - t) / 1e6;
      if (!out.every((o) => o.ok && !o.duplicate)) throw new Error(`${kind}: an item was not committed`);
      if (round > 0) (results[kind] ??= { statements: counted.statements(), ms: [] }).ms.push(ms);
    }
    // Every reader acks everything in its inbox, in one event-loop turn (one ack flush): the
    // messages' entries (each writes a `delivered` status for its sender) and the statuses.
    const waiting = await Promise.all(readers.map((d) => store.readInbox(d, 0, 1000)));
    counted.reset();
    const t = process.hrtime.bigint();
    await Promise.all(
      readers.map((d, i) =>
        store.ack(
          d,
          waiting[i]!.map((e) => e.offset),
          2000 + round,
        ),
      ),
    );
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (round > 0) (results['ack'] ??= { statements: counted.statements(), ms: [] }).ms.push(ms);
  }
  console.log(
    `PostgreSQL store, batches of ${N} items (acks: ${N} devices), ${rounds - 1} rounds after a warm-up`,
  );
  for (const [kind, r] of Object.entries(results)) {
    const ms = [...r.ms].sort((a, b) => a - b);
    const median = ms[Math.floor(ms.length / 2)]!;
    console.log(
      `${kind.padEnd(8)} ${String(r.statements).padStart(4)} statements, ${median.toFixed(1)} ms per batch (median)`,
    );
    console.log(
      JSON.stringify({ scenario: 'pg-batch', system: kind, metric: 'statements', value: r.statements }),
    );
    console.log(JSON.stringify({ scenario: 'pg-batch', system: kind, metric: 'batch_ms', value: median }));
  }
} finally {
  await store.close();
  await pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await pool.end();
}
