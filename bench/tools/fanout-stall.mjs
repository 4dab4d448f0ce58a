// How long one group message holds the event loop with the SQLite store: the synchronous part of
// `store.append` (the transaction; the WAL flush runs off the loop) for a message to a group of
// N single-device members, all offline, as `postbox serve` opens the store. Messages go one at a
// time, each waiting for its flush (how long that took after the stall is reported too), so every
// inbox grows by one entry per message. With
// --batch K, K messages (to K groups of the same members) share each append, as the engine's
// commit batches would put them. Less noisy than a latency bench: it times one process's own work.
//   npm run build && node bench/tools/fanout-stall.mjs [--members 1024] [--messages 90] [--batch 1]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { sqliteServerStore } from 'postbox/server/sqlite';

const { values } = parseArgs({
  options: {
    members: { type: 'string', default: '1024' },
    messages: { type: 'string', default: '90' },
    batch: { type: 'string', default: '1' },
  },
});
const members = Number(values.members);
const messages = Number(values.messages);
const batch = Number(values.batch);
const dir = mkdtempSync(join(tmpdir(), 'postbox-fanout-stall-'));
const store = sqliteServerStore({ path: join(dir, 'db.sqlite'), walFlush: 'background' });
const now = Date.now();
const from = { user: 'u0', device: 'd1' };
for (let i = 0; i < members; i++) await store.registerDevice({ user: `u${i}`, device: 'd1' }, now);
const others = Array.from({ length: members - 1 }, (_, i) => `u${i + 1}`);
for (let g = 0; g < batch; g++) {
  const change = { op: 'create', name: 'g', members: others };
  await store.append(
    [{ kind: 'group', from, id: `c${g}`, group: `#g${g}`, change, maxMembers: members }],
    now,
  );
}
const body = new Uint8Array(100);
const stalls = [];
const flushes = [];
let rows = 0;
for (let k = 1; k <= messages; k++) {
  const items = Array.from({ length: batch }, (_, g) => ({
    kind: 'msg',
    from,
    id: `m${k}.${g}`,
    to: `#g${g}`,
    group: true,
    seq: k,
    body,
  }));
  const t = performance.now();
  const flushed = store.append(items, now + k);
  const sync = performance.now();
  stalls.push(sync - t);
  const outs = await flushed;
  flushes.push(performance.now() - sync);
  for (const out of outs) {
    if (!out.ok) throw new Error(`append refused: ${out.code}`);
    rows += out.notify.length;
  }
}
const settled = (xs) => xs.slice(Math.min(10, messages - 1)).sort((a, b) => a - b);
const sorted = settled(stalls);
const at = (q, xs = sorted) => xs[Math.floor(q * (xs.length - 1))];
const waits = settled(flushes);
const perRow = (ms) => ((1000 * ms) / (rows / messages)).toFixed(1);
console.log(
  `${members} members, ${batch} message(s) per append, ${messages} appends: ` +
    `event-loop stall per append min ${at(0).toFixed(2)} p50 ${at(0.5).toFixed(2)} p90 ${at(0.9).toFixed(2)} ` +
    `max ${at(1).toFixed(2)} ms; per fan-out row min ${perRow(at(0))} p50 ${perRow(at(0.5))} µs; ` +
    `then the WAL flush (off the loop) p50 ${at(0.5, waits).toFixed(2)} p90 ${at(0.9, waits).toFixed(2)} ms`,
);
await store.close();
rmSync(dir, { recursive: true, force: true });
