// What a 1:1 send waits for while group messages to a full group commit, with the SQLite store
// (as `postbox serve` opens it) writing each group message whole or in slices (`sliceRows`, the
// engine's choice while others send; see src/server/stores/sqlite-fanout.ts). Group messages go
// one after the other (each waits for its flush, as the engine's large batches do), and a 1:1
// message goes every --every ms beside them, each its own append, as the engine's small batches
// beside a large one. Reports the 1:1 appends' latency (call to durable answer) and the group
// messages' own, and the event loop's delay (p99 and max, medians of runs), per mode, the modes
// interleaved on fresh files.
//   npm run build && node bench/tools/fanout-slices.mjs [--members 1024] [--messages 40] [--slices 0,256] [--every 2] [--rounds 3]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { sqliteServerStore } from 'postbox/server/sqlite';

const { values } = parseArgs({
  options: {
    members: { type: 'string', default: '1024' },
    messages: { type: 'string', default: '40' },
    slices: { type: 'string', default: '0,256' },
    every: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
  },
});
const members = Number(values.members);
const messages = Number(values.messages);
const every = Number(values.every);
const modes = values.slices.split(',').map(Number);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const q = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
};

async function run(slice) {
  const dir = mkdtempSync(join(tmpdir(), 'postbox-fanout-slices-'));
  const store = sqliteServerStore({ path: join(dir, 'db.sqlite'), walFlush: 'background' });
  const now = Date.now();
  const from = { user: 'u0', device: 'd1' };
  await Promise.all(
    Array.from({ length: members }, (_, i) => store.registerDevice({ user: `u${i}`, device: 'd1' }, now)),
  );
  await store.registerDevice({ user: 'alice', device: 'a1' }, now);
  await store.registerDevice({ user: 'bob', device: 'b1' }, now);
  const others = Array.from({ length: members - 1 }, (_, i) => `u${i + 1}`);
  const change = { op: 'create', name: 'g', members: others };
  await store.append([{ kind: 'group', from, id: 'c', group: '#g', change, maxMembers: members }], now);
  const body = new Uint8Array(100);
  const direct = [];
  const group = [];
  let done = false;
  let n = 0;
  const pending = [];
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const directs = (async () => {
    while (!done) {
      const t = performance.now();
      const item = {
        kind: 'msg',
        from: { user: 'alice', device: 'a1' },
        id: `d${++n}`,
        to: 'bob',
        seq: n,
        body,
      };
      pending.push(store.append([item], now + n).then(() => direct.push(performance.now() - t)));
      await sleep(every);
    }
  })();
  for (let k = 1; k <= messages; k++) {
    const item = { kind: 'msg', from, id: `m${k}`, to: '#g', group: true, seq: k, body };
    const t = performance.now();
    await store.append([item], now + k, slice > 0 ? { sliceRows: slice } : undefined);
    group.push(performance.now() - t);
  }
  done = true;
  loop.disable();
  await directs;
  await Promise.all(pending);
  await store.close();
  rmSync(dir, { recursive: true, force: true });
  return { direct, group, stall: loop.max / 1e6, stall99: loop.percentile(99) / 1e6 };
}

const all = new Map(modes.map((m) => [m, { direct: [], group: [], stall: [], stall99: [] }]));
for (let r = 0; r < Number(values.rounds); r++) {
  for (const m of modes) {
    const out = await run(m);
    all.get(m).direct.push(...out.direct);
    all.get(m).group.push(...out.group);
    all.get(m).stall.push(out.stall);
    all.get(m).stall99.push(out.stall99);
  }
}
for (const [m, { direct, group, stall, stall99 }] of all) {
  console.log(
    `${m > 0 ? `sliceRows ${m}` : 'whole'}: 1:1 append p50 ${q(direct, 0.5).toFixed(2)} p90 ${q(direct, 0.9).toFixed(2)} ` +
      `p99 ${q(direct, 0.99).toFixed(2)} max ${q(direct, 1).toFixed(2)} ms (${direct.length}); ` +
      `group message p50 ${q(group, 0.5).toFixed(2)} p90 ${q(group, 0.9).toFixed(2)} ms (${group.length}); ` +
      `event-loop delay p99 ${q(stall99, 0.5).toFixed(1)} max ${q(stall, 0.5).toFixed(1)} ms (medians of runs)`,
  );
}
