// PostgreSQL WAL bytes per 1:1 message life through the server store, with many senders sending
// ULID ids (as clients do by default): sender/recipient pairs, batches of 64 messages from random senders,
// each recipient acking its entry and each sender the `delivered` status, after a prefill of
// dedupe records (a deployment keeps every message's record for the retention period) and a
// CHECKPOINT, so that the first change to each page writes it whole, as in a running server.
// `--pairs N` sets how many senders (and recipients) there are.
//
//   npx tsx bench/tools/pg-wal-per-message.ts [--url URL] [--pairs 200] [--prefill 200000] [--batches 200]
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { DeviceAddress, MessageInput } from '../../src/server/store.js';
import { openPostgresServerStore } from '../../src/server/stores/postgres.js';
import { ulidFactory } from '../../src/util/ulid.js';

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    prefill: { type: 'string', default: '200000' },
    batches: { type: 'string', default: '200' },
    pairs: { type: 'string', default: '200' },
  },
});
const pairs = Number(values.pairs);
const pool = new pg.Pool({ connectionString: values.url, max: 4 });
const schema = `pbbench_wal_${Math.random().toString(36).slice(2, 8)}`;
const store = await openPostgresServerStore({ pool, schema });
const senders: DeviceAddress[] = Array.from({ length: pairs }, (_, i) => ({ user: `s${i}`, device: 'd' }));
const readers: DeviceAddress[] = Array.from({ length: pairs }, (_, i) => ({ user: `r${i}`, device: 'd' }));
for (const d of [...senders, ...readers]) await store.registerDevice(d, 1);
const ids = senders.map(() => ulidFactory({ now: Date.now }, Math.random));
const body = new Uint8Array(100);
let seq = 0;
const batchOf = (n: number): MessageInput[] =>
  Array.from({ length: n }, () => {
    const i = Math.floor(Math.random() * pairs);
    return { kind: 'msg', from: senders[i]!, id: ids[i]!(), to: readers[i]!.user, seq: ++seq, body };
  });
/** One round: a batch appended, its entries acked, the statuses acked. */
async function round(): Promise<number> {
  const items = batchOf(64);
  const out = await store.append(items, Date.now());
  const acks = out.flatMap((o) =>
    o.ok && o.offsets ? o.notify.map((d, j) => store.ack(d, [o.offsets![j]!], Date.now())) : [],
  );
  const results = await Promise.all(acks);
  await Promise.all(
    results.flatMap((r) => (r.entries ?? []).map((e) => store.ack(e.device, [e.entry.offset], Date.now()))),
  );
  return items.length;
}
const lsn = async (): Promise<string> =>
  ((await pool.query('SELECT pg_current_wal_lsn() AS l')).rows[0] as { l: string }).l;
try {
  // The prefill: dedupe records of earlier messages, as if sent and long delivered.
  const prefill = Number(values.prefill);
  for (let done = 0; done < prefill; done += 10_000) {
    await pool.query(
      `INSERT INTO ${schema}.dedupe (from_user, from_device, msg_id, ts, to_user)
       SELECT 's' || (g % ${pairs}), 'd', $1 || lpad(g::text, 10, '0'), 1, 'r' || (g % ${pairs})
       FROM generate_series($2::int, $3::int) g`,
      ['0OLD', done, Math.min(done + 10_000, prefill) - 1],
    );
  }
  for (let i = 0; i < 20; i++) await round(); // warm-up
  await pool.query('CHECKPOINT');
  const before = await lsn();
  const t0 = performance.now();
  let lives = 0;
  for (let i = 0; i < Number(values.batches); i++) lives += await round();
  const ms = performance.now() - t0;
  const wal = Number(
    (
      (await pool.query('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1) AS d', [before])).rows[0] as {
        d: string;
      }
    ).d,
  );
  console.log(
    `${lives} lives: ${(wal / lives).toFixed(0)} B of WAL per life, ${((1000 * lives) / ms).toFixed(0)} lives/s`,
  );
  console.log(
    JSON.stringify({
      scenario: 'pg-wal',
      metric: 'wal_bytes_per_life',
      value: Math.round(wal / lives),
      unit: 'B',
    }),
  );
} finally {
  await store.close();
  await pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await pool.end();
}
