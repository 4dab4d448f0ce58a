// Append throughput of the PostgreSQL server store (synchronous_commit on): messages of 100 bytes
// to a user with 2 devices, committed in batches of 1, 16 and 256 items (one transaction, so one
// WAL flush, per batch), first from one sender, then from `--nodes` stores (separate pools, as
// gateway nodes would be) × 4 concurrent senders each, all writing into the same two inboxes:
// the worst case for the per-device head row, which every writer to an inbox locks.
//
//   npx tsx bench/postgres-append.ts [--url URL] [--seconds S] [--nodes N]
//
// URL defaults to postgres://postgres@127.0.0.1:5432/test; the bench works in a schema of its
// own and drops it. Prints a table, then one JSON line per run.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { MessageInput, ServerStore } from '../src/server/store.js';
import { openPostgresServerStore } from '../src/server/stores/postgres.js';

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    seconds: { type: 'string', default: '3' },
    nodes: { type: 'string', default: '3' },
  },
});
const url = values.url;
const seconds = Number(values.seconds);
const nodeCount = Number(values.nodes);
const body = new Uint8Array(100).fill(7);

interface Result {
  batch: number;
  writers: number;
  messages: number;
  seconds: number;
  messagesPerSecond: number;
  commitsPerSecond: number;
  meanCommitMs: number;
}

async function measure(batch: number, nodes: number, sendersPerNode: number): Promise<Result> {
  const schema = `pb_bench_${randomBytes(4).toString('hex')}`;
  const stores: ServerStore[] = [];
  try {
    for (let i = 0; i < nodes; i++) {
      stores.push(
        await openPostgresServerStore({ connectionString: url, schema, poolSize: sendersPerNode + 1 }),
      );
    }
    const senders = Array.from({ length: nodes * sendersPerNode }, (_, i) => ({
      user: `s${i}`,
      device: 'd',
    }));
    for (const d of [...senders, { user: 'bob', device: 'b1' }, { user: 'bob', device: 'b2' }]) {
      await stores[0]!.registerDevice(d, 0);
    }
    let n = 0;
    const make = (from: { user: string; device: string }): MessageInput[] =>
      Array.from({ length: batch }, () => ({ kind: 'msg', from, id: `m${++n}`, to: 'bob', seq: n, body }));
    await stores[0]!.append(make(senders[0]!), Date.now()); // warm up
    n = 0;
    let commits = 0;
    const start = process.hrtime.bigint();
    const deadline = start + BigInt(Math.round(seconds * 1e9));
    await Promise.all(
      senders.map(async (s, i) => {
        const store = stores[i % nodes]!;
        while (process.hrtime.bigint() < deadline) {
          await store.append(make(s), Date.now());
          commits++;
        }
      }),
    );
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    return {
      batch,
      writers: senders.length,
      messages: n,
      seconds: elapsed,
      messagesPerSecond: n / elapsed,
      commitsPerSecond: commits / elapsed,
      meanCommitMs: (elapsed * 1000 * senders.length) / commits,
    };
  } finally {
    for (const s of stores) await s.close();
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await admin.end();
  }
}

const results: Result[] = [];
for (const batch of [1, 16, 256]) results.push(await measure(batch, 1, 1));
for (const batch of [1, 16, 256]) results.push(await measure(batch, nodeCount, 4));

console.log('| items per append | writers | messages/s | commits/s | mean commit ms |');
console.log('| ---: | ---: | ---: | ---: | ---: |');
for (const r of results) {
  console.log(
    `| ${r.batch} | ${r.writers} | ${Math.round(r.messagesPerSecond)} | ${Math.round(r.commitsPerSecond)} | ${r.meanCommitMs.toFixed(2)} |`,
  );
}
for (const r of results) console.log(JSON.stringify({ bench: 'postgres-append', ...r }));
