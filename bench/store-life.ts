// CPU per message life in the server store alone, SQLite beside memory, on one thread: what the
// SQLite store adds to a message's server cost with the engine, the sockets and the clients
// taken out (they are the same for both stores). A life is the one of 1:1 at saturation: the
// append (in batches, as the commit queue makes them), the recipient device's ack (which writes
// the `delivered` status into the sender's inbox) and the sender device's ack of that status;
// acks of one round go in one turn, as the engine's group commit takes them.
//
//   npx tsx bench/store-life.ts [--dir DIR] [--seconds S] [--batch N] [--pairs N] [--only sqlite]
//
// `--only NAME` measures one store (for a CPU profile of it alone: `node --cpu-prof --import tsx …`).
//
// CPU is process.cpuUsage (user + system) over the measured rounds, so the WAL flushes' thread
// pool time counts too; bytes written are the process's own (`/proc/self/io` write_bytes: the WAL
// and its checkpoints; Linux only). Message ids are ULIDs, one generator per sender, as clients
// make them by default. Prints a table and one JSON line per metric and store.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { DeviceAddress, MessageInput, ServerStore } from '../src/server/store.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { ulidFactory } from '../src/util/ulid.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    seconds: { type: 'string', default: '4' },
    batch: { type: 'string', default: '32' },
    pairs: { type: 'string', default: '200' },
    only: { type: 'string' },
  },
});
const dir = fs.mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'postbox-life-'));
const seconds = Number(values.seconds);
const batch = Number(values.batch);
const pairs = Number(values.pairs);
const body = new Uint8Array(100).fill(7);
const senders: DeviceAddress[] = Array.from({ length: pairs }, (_, i) => ({ user: `s${i}`, device: 'd' }));
const recipients: DeviceAddress[] = Array.from({ length: pairs }, (_, i) => ({ user: `r${i}`, device: 'd' }));
const ids = senders.map(() => ulidFactory({ now: Date.now }, Math.random));

/** Bytes this process has written to storage so far, or undefined where /proc does not say. */
function writtenBytes(): number | undefined {
  try {
    const m = /^write_bytes: (\d+)$/m.exec(fs.readFileSync('/proc/self/io', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** One round: `batch` messages appended, their entries acked, the statuses acked. */
async function round(store: ServerStore, n: { next: number }): Promise<number> {
  const items: MessageInput[] = [];
  for (let i = 0; i < batch; i++) {
    const p = n.next++ % pairs;
    items.push({
      kind: 'msg',
      from: senders[p]!,
      id: ids[p]!(),
      to: recipients[p]!.user,
      seq: n.next,
      body,
    });
  }
  const now = Date.now();
  const out = await store.append(items, now);
  const acks: Array<Promise<unknown>> = [];
  for (const o of out) {
    if (!o.ok || !o.offsets) throw new Error('append refused');
    o.notify.forEach((d, j) => acks.push(store.ack(d, [o.offsets![j]!], now)));
  }
  const results = (await Promise.all(acks)) as Array<{
    entries?: Array<{ device: DeviceAddress; entry: { offset: number } }>;
  }>;
  const statusAcks: Array<Promise<unknown>> = [];
  for (const r of results)
    for (const e of r.entries ?? []) statusAcks.push(store.ack(e.device, [e.entry.offset], now));
  await Promise.all(statusAcks);
  return items.length;
}

async function measure(
  name: string,
  store: ServerStore,
): Promise<{ name: string; us: number; lives: number; bytes: number | undefined }> {
  try {
    for (const d of [...senders, ...recipients]) await store.registerDevice(d, 0);
    const n = { next: 0 };
    const warm = Date.now() + 500;
    while (Date.now() < warm) await round(store, n);
    let lives = 0;
    const cpu = process.cpuUsage();
    const written = writtenBytes();
    const end = Date.now() + seconds * 1000;
    while (Date.now() < end) lives += await round(store, n);
    const used = process.cpuUsage(cpu);
    const after = writtenBytes();
    const bytes = written === undefined || after === undefined ? undefined : (after - written) / lives;
    return { name, us: (used.user + used.system) / lives, lives, bytes };
  } finally {
    await store.close();
  }
}

const stores: Record<string, () => ServerStore> = {
  memory: () => memoryServerStore(),
  sqlite: () => sqliteServerStore({ path: path.join(dir, 'life.sqlite'), walFlush: 'background' }),
};
const results = [];
try {
  for (const [name, make] of Object.entries(stores)) {
    if (values.only === undefined || values.only === name) results.push(await measure(name, make()));
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(`store CPU per 1:1 message life, batches of ${batch}, ${pairs} pairs, ${seconds} s each`);
const kb = (b: number | undefined): string => (b === undefined ? '?' : (b / 1024).toFixed(1));
for (const r of results)
  console.log(
    `${r.name.padEnd(7)} ${r.us.toFixed(1).padStart(7)} µs  ${kb(r.bytes).padStart(5)} KB written  (${r.lives} lives)`,
  );
if (results.length === 2)
  console.log(
    `sqlite / memory ${(results[1]!.us / results[0]!.us).toFixed(2)}x, sqlite - memory ${(results[1]!.us - results[0]!.us).toFixed(1)} µs`,
  );
for (const r of results) {
  console.log(
    JSON.stringify({
      scenario: 'store-life',
      system: r.name,
      metric: 'cpu_us_per_life',
      value: +r.us.toFixed(2),
      unit: 'µs',
    }),
  );
  if (r.bytes !== undefined) {
    const value = +r.bytes.toFixed(0);
    console.log(
      JSON.stringify({
        scenario: 'store-life',
        system: r.name,
        metric: 'bytes_written_per_life',
        value,
        unit: 'B',
      }),
    );
  }
}
