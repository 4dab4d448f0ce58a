// Append throughput of the SQLite server store on a real file (WAL, synchronous=FULL): messages
// of 100 bytes from one sender device to a user with 2 devices, committed in batches of 1, 16
// and 256 items (one transaction, so one WAL fsync, per batch). Shows what group commit buys.
//
//   npx tsx bench/sqlite-append.ts [--dir DIR] [--seconds S]
//
// DIR defaults to the OS temp dir; put it on the disk you mean to measure (a tmpfs has no
// fsync cost). Prints a table, then one JSON line per batch size.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { MessageInput } from '../src/server/store.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';

const { values } = parseArgs({
  options: { dir: { type: 'string' }, seconds: { type: 'string', default: '3' } },
});
const dir = fs.mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'postbox-bench-'));
const seconds = Number(values.seconds);
const sender = { user: 'alice', device: 'a1' };
const body = new Uint8Array(100).fill(7);

interface Result {
  batch: number;
  messages: number;
  seconds: number;
  messagesPerSecond: number;
  commitsPerSecond: number;
  meanCommitMs: number;
}

async function measure(batch: number): Promise<Result> {
  const store = sqliteServerStore({ path: path.join(dir, `append-${batch}.sqlite`) });
  try {
    for (const d of [sender, { user: 'bob', device: 'b1' }, { user: 'bob', device: 'b2' }]) {
      await store.registerDevice(d, 0);
    }
    let n = 0;
    const make = (): MessageInput[] =>
      Array.from({ length: batch }, () => ({
        kind: 'msg',
        from: sender,
        id: `m${++n}`,
        to: 'bob',
        seq: n,
        body,
      }));
    for (let i = 0; i < 5; i++) await store.append(make(), Date.now()); // warm up
    n = 0;
    let commits = 0;
    const start = process.hrtime.bigint();
    const deadline = start + BigInt(Math.round(seconds * 1e9));
    let now = start;
    while (now < deadline) {
      await store.append(make(), Date.now());
      commits++;
      now = process.hrtime.bigint();
    }
    const elapsed = Number(now - start) / 1e9;
    return {
      batch,
      messages: n,
      seconds: elapsed,
      messagesPerSecond: n / elapsed,
      commitsPerSecond: commits / elapsed,
      meanCommitMs: (elapsed * 1000) / commits,
    };
  } finally {
    await store.close();
  }
}

const results: Result[] = [];
try {
  for (const batch of [1, 16, 256]) results.push(await measure(batch));
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

const fmt = (x: number, d = 0) =>
  x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
console.log(
  `sqlite server store append, 100-byte messages to 2 recipient devices, ${os.platform()} ${os.arch()}`,
);
console.log('batch | messages/s | commits/s | ms/commit');
console.log('----: | ---------: | --------: | --------:');
for (const r of results) {
  console.log(
    `${r.batch} | ${fmt(r.messagesPerSecond)} | ${fmt(r.commitsPerSecond)} | ${fmt(r.meanCommitMs, 2)}`,
  );
}
for (const r of results) {
  console.log(
    JSON.stringify({
      scenario: 'sqlite-append',
      batch: r.batch,
      metric: 'messages_per_second',
      value: Math.round(r.messagesPerSecond),
      unit: 'msg/s',
    }),
  );
}
