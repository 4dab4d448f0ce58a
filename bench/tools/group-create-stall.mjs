// How long creating one 1,024-member group holds the event loop with the SQLite store: the
// synchronous part of `store.append` (the transaction; the WAL flush runs off the loop) for a
// create naming N single-device users, 30 creations one after the other, as `postbox serve`
// opens the store. Every member gets the creation event, and every member's group count grows.
//   npm run build && node bench/tools/group-create-stall.mjs [--members 1024] [--groups 30]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { sqliteServerStore } from 'postbox/server/sqlite';

const { values } = parseArgs({
  options: { members: { type: 'string', default: '1024' }, groups: { type: 'string', default: '30' } },
});
const members = Number(values.members);
const groups = Number(values.groups);
const dir = mkdtempSync(join(tmpdir(), 'postbox-create-stall-'));
const store = sqliteServerStore({ path: join(dir, 'db.sqlite'), walFlush: 'background' });
const now = Date.now();
const from = { user: 'u0', device: 'd1' };
for (let i = 0; i < members; i++) await store.registerDevice({ user: `u${i}`, device: 'd1' }, now);
const others = Array.from({ length: members - 1 }, (_, i) => `u${i + 1}`);
const stalls = [];
for (let g = 0; g < groups; g++) {
  const change = { op: 'create', name: 'g', members: others };
  const t = performance.now();
  const flushed = store.append(
    [{ kind: 'group', from, id: `c${g}`, group: `#g${g}`, change, maxMembers: members }],
    now + g,
  );
  stalls.push(performance.now() - t);
  const [out] = await flushed;
  if (!out.ok) throw new Error(`create refused: ${out.code}`);
}
const sorted = stalls.slice(Math.min(5, groups - 1)).sort((a, b) => a - b);
const at = (q) => sorted[Math.floor(q * (sorted.length - 1))].toFixed(2);
console.log(
  `${members}-member group created ${groups} times: event-loop stall per create (after 5) ` +
    `min ${at(0)} p50 ${at(0.5)} p90 ${at(0.9)} max ${at(1)} ms`,
);
await store.close();
rmSync(dir, { recursive: true, force: true });
