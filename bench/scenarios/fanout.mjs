// Group fan-out (load side). `n` members connect, all online; for each group size, members
// 0…size-1 form a group (member 0 is the only sender) and, after a settle:
//   1. paced: one message at a time — the next leaves `gapMs` after the previous one reached
//      every member and, for a system with statuses (postbox), after the sender saw its
//      aggregate ✓✓ (every member's receipt back), so each message meets an idle system: fan-out
//      latency, not queueing. The gap (50 ms) is longer than a client's ack delay (25 ms): the
//      sender's acks of its 1,023 receipts land before the next message, not in its fan-out. After `pacedWarmup` uncounted ones, up to `pacedMsgs` messages or
//      `pacedMs`, whichever ends first. Per message: send → the first member has it, send → the
//      last member has it (p50/p99 over the messages); postbox also send → ✓ (committed) and
//      send → ✓✓. And the server's and the load process's CPU per message, which tells where
//      the time to the last member goes;
//   2. saturation: the sender keeps `window` messages in flight (a message leaves the window
//      when the last member has it); member deliveries per second over `measureMs` after
//      `warmupMs`, and the server's CPU over the same window. Before the next group the backlog
//      drains (at most `drainMs`).
// Every delivery is checked: missing (never arrived), duplicates, out of order per member.
import { performance } from 'node:perf_hooks';
import { mark, sleep } from '../lib/child.mjs';
import { Samples } from '../lib/stats.mjs';

const PS = [50, 99];
const cpuSec = (a, b) => (b.user + b.system - a.user - a.system) / 1e6;

export async function run(sys, p) {
  const { url, sizes, size, window: W, warmupMs, measureMs, settleMs, drainMs } = p;
  const { pacedWarmup, pacedMsgs, pacedMs, gapMs } = p;
  const n = Math.max(...sizes);
  const now = () => performance.now();
  const hasStatus = Boolean(sys.capabilities?.status);

  // Per message tag: send time, members that have it, first and last arrival.
  const sentAt = new Samples(1 << 16);
  const firstAt = new Samples(1 << 16);
  const lastAt = new Samples(1 << 16);
  const count = new Samples(1 << 16);
  const lastTag = new Float64Array(n).fill(-1);
  let expected = 0; // recipients per message of the current group
  let nextTag = 0;
  let duplicates = 0;
  let reordered = 0;
  let inWindow = 0;
  let tStart = Infinity;
  let tEnd = Infinity;
  let onComplete; // called with the tag when the last member has it
  const statusAt = new Map();
  let onStatusDone;

  const onDeliver = (member, tag) => {
    const t = now();
    if (tag <= lastTag[member]) {
      if (tag === lastTag[member]) duplicates++;
      else reordered++;
      return;
    }
    lastTag[member] = tag;
    if (t >= tStart && t < tEnd) inWindow++;
    const c = count.get(tag) + 1;
    count.set(tag, c);
    if (c === 1) firstAt.set(tag, t);
    if (c === expected) {
      lastAt.set(tag, t);
      onComplete?.(tag);
    }
  };
  const ackAt = new Map();
  const onAck = (tag) => ackAt.set(tag, now());
  const onStatus = (tag) => {
    statusAt.set(tag, now());
    onStatusDone?.(tag);
  };

  const client = await sys.fanoutConnect({ url, n, size, prefix: p.prefix, onDeliver, onAck, onStatus });
  const out = {};
  let missing = 0;

  for (const members of sizes) {
    const group = await client.group(members, members);
    expected = members - 1;
    await sleep(settleMs);
    const k = String(members);
    const tags = [];
    const send = () => {
      const tag = nextTag++;
      count.set(tag, 0);
      sentAt.set(tag, now());
      tags.push(tag);
      group.send(tag);
      return tag;
    };
    const complete = (tag) => count.get(tag) >= expected;
    const waitAll = async (ms, statuses = hasStatus) => {
      const deadline = now() + ms;
      while (now() < deadline && tags.some((t) => !complete(t) || (statuses && !statusAt.has(t)))) {
        await sleep(10);
      }
    };

    // 1. Paced: one message at a time (the first `pacedWarmup` ones are not counted).
    const lat = { first: new Samples(), last: new Samples(), acked: new Samples(), status: new Samples() };
    let pacedStart = now();
    const pacedTags = [];
    let p0;
    for (let j = 0; pacedTags.length < pacedMsgs && now() - pacedStart < pacedMs; j++) {
      if (j === pacedWarmup) {
        pacedTags.length = 0;
        p0 = { server: (await mark('paced')).cpu, load: process.cpuUsage() };
        pacedStart = now();
      }
      let resolve;
      const done = new Promise((r) => (resolve = r));
      let need = hasStatus ? 2 : 1;
      const tag = nextTag;
      onComplete = (t) => t === tag && --need === 0 && resolve();
      onStatusDone = (t) => t === tag && --need === 0 && resolve();
      send();
      pacedTags.push(tag);
      const timedOut = await Promise.race([done.then(() => false), sleep(5000).then(() => true)]);
      if (timedOut) break;
      await sleep(gapMs);
    }
    onComplete = undefined;
    onStatusDone = undefined;
    await waitAll(5000);
    // CPU per paced message, server and load side: where the time to the last member goes.
    if (p0 && pacedTags.length > 0) {
      const p1 = { server: (await mark('paced-end')).cpu, load: process.cpuUsage() };
      if (p0.server && p1.server) {
        out[`${k}:server_cpu_per_msg_ms`] = (1000 * cpuSec(p0.server, p1.server)) / pacedTags.length;
      }
      out[`${k}:load_cpu_per_msg_ms`] = (1000 * cpuSec(p0.load, p1.load)) / pacedTags.length;
    }
    for (const tag of pacedTags) {
      const s = sentAt.get(tag);
      if (count.get(tag) > 0) lat.first.push(firstAt.get(tag) - s);
      if (complete(tag)) lat.last.push(lastAt.get(tag) - s);
      if (ackAt.has(tag)) lat.acked.push(ackAt.get(tag) - s);
      if (statusAt.has(tag)) lat.status.push(statusAt.get(tag) - s);
    }
    for (const [name, s] of Object.entries(lat)) {
      if (s.length === 0) continue;
      const [p50, p99] = s.percentiles(PS);
      Object.assign(out, { [`${k}:${name}_p50_ms`]: p50, [`${k}:${name}_p99_ms`]: p99 });
    }
    out[`${k}:paced_msgs`] = pacedTags.length;

    // 2. Saturation.
    let inflight = 0;
    let stopping = false;
    const pump = () => {
      while (!stopping && inflight < W) {
        inflight++;
        send();
      }
    };
    onComplete = () => {
      inflight--;
      pump();
    };
    pump();
    await sleep(warmupMs);
    const m0 = await mark('start');
    const c0 = process.cpuUsage();
    inWindow = 0;
    tEnd = Infinity;
    tStart = now();
    await sleep(measureMs);
    tEnd = now();
    const c1 = process.cpuUsage();
    const m1 = await mark('end');
    stopping = true;
    const secs = (tEnd - tStart) / 1000;
    out[`${k}:deliveries_per_s`] = inWindow / secs;
    if (m0.cpu && m1.cpu) {
      const serverCpu = cpuSec(m0.cpu, m1.cpu);
      out[`${k}:server_cpu_pct`] = (100 * serverCpu) / secs;
      out[`${k}:deliveries_per_server_cpu_s`] = inWindow / serverCpu;
    }
    out[`${k}:load_cpu_pct`] = (100 * cpuSec(c0, c1)) / secs;
    onComplete = undefined;
    // Let the last deliveries arrive and, before another group, the backlog drain (postbox: the
    // members' receipts back to the sender).
    await waitAll(members === n ? 5000 : drainMs, hasStatus && members !== n);
    for (const tag of tags) missing += Math.max(0, expected - count.get(tag));
  }
  await client.close();
  return { ...out, missing, duplicates, reordered };
}
