// Per-message timelines for the latency-light scenario (issue 23): where a message waits on its
// way from the sender's `send` to the sender's ✓✓.
//
// Server side (`instrument`): the store is wrapped so that, for every TRACE_EVERY-th message (by
// the tag the load puts in the first 4 bytes of each body), the moments the engine called
// `append`, the store's synchronous transaction returned, the append resolved (durable), the
// recipient's ack reached the store and was answered, and its `delivered` status was read back
// are recorded; beside them the event loop's delay, GC pauses and the time spent in synchronous
// store calls. Load side (`breakdown`): those moments and the load's own (scheduled, sent,
// delivered, ✓, ✓✓) become segments, reported as p50/p99 over the sampled messages and as the
// mean of each segment over the slowest 1% — the p99 outliers — so one can see where they wait.
// Times are `performance.timeOrigin + performance.now()` on both sides: one clock per machine.
import { performance, PerformanceObserver, monitorEventLoopDelay } from 'node:perf_hooks';

/** Every TRACE_EVERY-th tag is traced. */
export const TRACE_EVERY = 8;

/** Milliseconds on a clock both processes share. */
export const clock = () => performance.timeOrigin + performance.now();

const tagOf = (b) =>
  b && b.byteLength >= 4 ? new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true) : -1;
const sampled = (tag) => tag >= 0 && tag % TRACE_EVERY === 0;

/**
 * Wraps `store`; returns the wrapped store and `request(op)`: `{ op: 'start' }` starts a
 * measurement window, `{ op: 'end' }` ends it and answers with what was recorded.
 */
export function instrument(store) {
  let on = false;
  let byTag = new Map(); // tag → { append, tx, synced, ackIn, ackOut, statusRead }
  let byOffset = new Map(); // `user/device:offset` → record
  let byId = new Map(); // `sender user:message id` → record
  let syncMs = 0; // time inside synchronous store calls (transactions, reads)
  let appends = 0;
  let gcMs = 0;
  let gcMax = 0;
  let gcCount = 0;
  const eld = monitorEventLoopDelay({ resolution: 1 });
  new PerformanceObserver((list) => {
    if (!on) return;
    for (const e of list.getEntries()) {
      gcMs += e.duration;
      gcMax = Math.max(gcMax, e.duration);
      gcCount++;
    }
  }).observe({ entryTypes: ['gc'] });

  const timed = (fn) => {
    const t0 = clock();
    const p = fn();
    const t1 = clock();
    if (on) syncMs += t1 - t0;
    return { p, t0, t1 };
  };

  const wrapped = {
    ...store,
    append(batch, now) {
      const { p, t0, t1 } = timed(() => store.append(batch, now));
      if (!on) return p;
      appends++;
      const recs = [];
      batch.forEach((item, i) => {
        if (item.kind !== 'msg') return;
        const tag = tagOf(item.body);
        if (!sampled(tag)) return;
        const rec = { append: t0, tx: t1 };
        byTag.set(tag, rec);
        byId.set(`${item.from.user}:${item.id}`, rec);
        recs.push([i, rec]);
      });
      if (recs.length === 0) return p;
      return p.then((outs) => {
        const t = clock();
        for (const [i, rec] of recs) {
          rec.synced = t;
          const o = outs[i];
          if (!o?.ok || !o.offsets) continue;
          o.notify.forEach((d, j) => byOffset.set(`${d.user}/${d.device}:${o.offsets[j]}`, rec));
        }
        return outs;
      });
    },
    ack(device, offsets, now) {
      const { p, t0 } = timed(() => store.ack(device, offsets, now));
      if (!on) return p;
      const recs = offsets.map((o) => byOffset.get(`${device.user}/${device.device}:${o}`)).filter(Boolean);
      for (const rec of recs) rec.ackIn ??= t0;
      if (recs.length === 0) return p;
      return p.then((res) => {
        const t = clock();
        for (const rec of recs) rec.ackOut ??= t;
        return res;
      });
    },
    readInbox(device, after, limit) {
      const { p } = timed(() => store.readInbox(device, after, limit));
      if (!on) return p;
      return p.then((entries) => {
        const t = clock();
        for (const e of entries) {
          if (e.kind !== 'status') continue;
          for (const id of e.ids) {
            const rec = byId.get(`${device.user}:${id}`);
            if (rec) rec.statusRead ??= t;
          }
        }
        return entries;
      });
    },
  };

  function request({ op }) {
    if (op === 'start') {
      byTag = new Map();
      byOffset = new Map();
      byId = new Map();
      syncMs = gcMs = gcMax = gcCount = appends = 0;
      eld.reset();
      eld.enable();
      on = true;
      return { ok: true };
    }
    on = false;
    eld.disable();
    const ms = (ns) => ns / 1e6;
    return {
      server: Object.fromEntries(byTag),
      loop: {
        eld_p50_ms: ms(eld.percentile(50)),
        eld_p99_ms: ms(eld.percentile(99)),
        eld_max_ms: ms(eld.max),
        gc_ms: gcMs,
        gc_max_ms: gcMax,
        gc_count: gcCount,
        store_sync_ms: syncMs,
        appends,
      },
    };
  }
  return { store: wrapped, request };
}

/** The segments of a message's life: name, from, to (fields of the merged record). */
const SEGMENTS = [
  ['load', 'at', 'sent'], // the load process late to send (its own core busy)
  ['to_server', 'sent', 'append'], // wire, server event loop, commit batching
  ['tx', 'append', 'tx'], // the synchronous transaction
  ['flush', 'tx', 'synced'], // waiting for the WAL flush that covers it
  ['to_recipient', 'synced', 'delivered'], // push, wire, recipient client engine
  ['ack_wait', 'delivered', 'ackIn'], // recipient's ack: client delay, wire, server queue
  ['ack_commit', 'ackIn', 'ackOut'], // the ack's transaction and flush
  ['status_push', 'ackOut', 'statusOut'], // the status read back (0 when pushed as written)
  ['to_sender', 'statusOut', 'status'], // wire, sender client engine: ✓✓
];

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/**
 * Merges the load's records (`tag → { at, sent, acked, delivered, status }`) with the server's
 * and returns flat metrics: `seg_<name>_p50_ms`, `seg_<name>_p99_ms`, and `tail_<name>_ms`, the
 * mean of each segment over the slowest 1% of sampled messages by send → ✓✓ (send → delivered
 * when there is no ✓✓).
 */
export function breakdown(load, server) {
  const rows = [];
  for (const [tag, l] of load) {
    const s = server[tag];
    if (!s || l.delivered === undefined) continue;
    rows.push({ ...s, ...l, statusOut: s.statusRead ?? s.ackOut });
  }
  const out = { traced: rows.length };
  if (rows.length === 0) return out;
  const seg = (r, [, a, b]) => (r[a] !== undefined && r[b] !== undefined ? r[b] - r[a] : undefined);
  for (const def of SEGMENTS) {
    const v = rows
      .map((r) => seg(r, def))
      .filter((x) => x !== undefined)
      .sort((a, b) => a - b);
    if (v.length === 0) continue;
    out[`seg_${def[0]}_p50_ms`] = pct(v, 50);
    out[`seg_${def[0]}_p99_ms`] = pct(v, 99);
  }
  const total = (r) => (r.status ?? r.delivered) - r.at;
  const slow = rows.sort((a, b) => total(b) - total(a)).slice(0, Math.max(1, Math.ceil(rows.length / 100)));
  out.tail_total_ms = slow.reduce((a, r) => a + total(r), 0) / slow.length;
  for (const def of SEGMENTS) {
    const v = slow.map((r) => seg(r, def)).filter((x) => x !== undefined);
    if (v.length > 0) out[`tail_${def[0]}_ms`] = v.reduce((a, b) => a + b, 0) / v.length;
  }
  return out;
}
