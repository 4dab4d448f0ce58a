// Latency at fixed rates (load side). For each rate, messages are sent on an open-loop schedule
// spread round-robin over the clients (client i → client i + n/2), and each latency is measured
// from the message's *scheduled* send time, so a stalled system cannot hide its queueing
// (no coordinated omission). Percentiles cover the messages scheduled after the warm-up.
import { performance, PerformanceObserver, monitorEventLoopDelay } from 'node:perf_hooks';
import { mark, sleep } from '../lib/child.mjs';
import { procCpu } from '../lib/proc.mjs';
import { Samples } from '../lib/stats.mjs';
import { TRACE_EVERY, breakdown, clock } from '../systems/postbox.trace.mjs';

const PS = [50, 99, 99.9];

export async function run(sys, p) {
  const { url, n, size, rates, warmupMs, firstWarmupMs, measureMs, prefix, trace, receipts, timerPacing } = p;
  // The pacing loop spins (setImmediate) for the tightest send times; with `timerPacing` it sleeps
  // a timer tick (~1 ms) between rounds instead, so the load process's CPU is the clients' work and
  // not the spin's (client-cost reads it), at the price of up to a tick of send lateness.
  const next = timerPacing ? (fn) => setTimeout(fn, 1) : setImmediate;
  const now = () => performance.now();
  const sentAt = new Samples(1 << 20);
  const seq = new Int32Array(n);
  let lat;
  let tStart = Infinity;
  let tEnd = Infinity;
  let outstanding = 0;
  let lost = 0;
  let traced; // { tag, at, marks }: the one message whose timeline is reported
  let timelines; // tag → { at, sent, acked, delivered, status }: every TRACE_EVERY-th, in the window
  // Message lives ended (at ✓✓ for a system that reports it, else at delivery), whenever they
  // were scheduled: CPU per message divides by what was done, so saturation flatters no one.
  const ended = { delivered: 0, status: 0 };
  let endedAt0 = { ...ended };

  const inWindow = (tag) => {
    const s = sentAt.get(tag);
    return s >= tStart && s < tEnd ? s : undefined;
  };
  const follow = (tag, phase) => {
    if (traced?.tag === tag) traced.marks[phase] ??= now() - traced.at;
    const line = timelines?.get(tag);
    if (line) line[phase] ??= clock();
  };
  const onDeliver = (_to, tag) => {
    outstanding--;
    ended.delivered++;
    follow(tag, 'delivered');
    const s = inWindow(tag);
    if (s !== undefined) lat.delivered.push(now() - s);
  };
  const onAck = (_i, tag) => {
    follow(tag, 'acked');
    const s = inWindow(tag);
    if (s !== undefined) lat.acked.push(now() - s);
  };
  const onStatus = (_i, tag) => {
    ended.status++;
    follow(tag, 'status');
    const s = inWindow(tag);
    if (s !== undefined) lat.status.push(now() - s);
  };
  // The load process's own pauses (GC, event-loop delay) over each window: at light load the
  // tail is often the load's, not the server's, and this says so.
  const loadGc = { on: false, ms: 0, max: 0 };
  const gcObserver = new PerformanceObserver((list) => {
    if (!loadGc.on) return;
    for (const e of list.getEntries()) {
      loadGc.ms += e.duration;
      loadGc.max = Math.max(loadGc.max, e.duration);
    }
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  const loadEld = monitorEventLoopDelay({ resolution: 1 });
  const client = await sys.connect({ url, n, size, prefix, onDeliver, onAck, onStatus, receipts });

  const out = {};
  for (const rate of rates) {
    lat = { delivered: new Samples(), acked: new Samples(), status: new Samples() };
    const start = now();
    // The first rate also warms up the JIT and every connection, so it gets a longer warm-up.
    tStart = start + (rate === rates[0] ? firstWarmupMs : warmupMs);
    tEnd = tStart + measureMs;
    let sent = 0;
    let m0;
    let load0;
    traced = undefined;
    timelines = trace ? new Map() : undefined;
    const traceFrom = tStart + measureMs / 2;
    await new Promise((resolve) => {
      const tick = () => {
        const t = now();
        const due = Math.min(
          Math.floor(((t - start) * rate) / 1000),
          Math.ceil(((tEnd - start) * rate) / 1000),
        );
        while (sent < due) {
          const i = sent % n;
          const tag = seq[i]++ * n + i;
          const at = start + (sent * 1000) / rate;
          sentAt.set(tag, at);
          if (trace && traced === undefined && at >= traceFrom) traced = { tag, at, marks: {} };
          sent++;
          outstanding++;
          const line =
            timelines && tag % TRACE_EVERY === 0 && at >= tStart && at < tEnd
              ? { at: at + performance.timeOrigin, sent: clock() }
              : undefined;
          if (line) timelines.set(tag, line);
          client.send(i, (i + n / 2) % n, tag);
        }
        if (m0 === undefined && t >= tStart) {
          m0 = mark('start', trace ? { trace: { op: 'start' } } : undefined);
          load0 = procCpu(process.pid);
          endedAt0 = { ...ended };
          Object.assign(loadGc, { on: true, ms: 0, max: 0 });
          loadEld.reset();
          loadEld.enable();
        }
        if (t >= tEnd) resolve();
        else next(tick);
      };
      tick();
    });
    const load1 = procCpu(process.pid);
    loadGc.on = false;
    loadEld.disable();
    const lives = ended.status > 0 ? ended.status - endedAt0.status : ended.delivered - endedAt0.delivered;
    const m1 = await mark('end');
    const deadline = now() + 5000;
    while (outstanding > 0 && now() < deadline) await sleep(10);
    // A system with statuses: the last ✓✓ come after the last deliveries, and count too.
    while (lat.status.length > 0 && lat.status.length < lat.delivered.length && now() < deadline) {
      await sleep(10);
    }
    // The server's side of the timelines, once the last ✓✓ are in.
    const traceEnd = trace ? (await mark('trace', { trace: { op: 'end' } })).trace : undefined;
    lost += outstanding;
    outstanding = 0;
    const k = `${rate / 1000}k`;
    const c0 = (await m0).cpu;
    // CPU per message life ended in the window (µs, user + system, from /proc): at a steady
    // paced rate each message's whole life (send, ✓, delivery, ack, ✓✓) costs this much.
    const perMsg = (a, b) => (b.user + b.system - a.user - a.system) / Math.max(1, lives);
    if (c0 && m1.cpu) {
      out[`${k}:server_cpu_pct`] =
        (100 * (m1.cpu.user + m1.cpu.system - c0.user - c0.system)) / 1e6 / (measureMs / 1000);
      out[`${k}:server_cpu_us_per_msg`] = perMsg(c0, m1.cpu);
    }
    if (load0 && load1) out[`${k}:load_cpu_us_per_msg`] = perMsg(load0, load1);
    out[`${k}:load_gc_ms`] = loadGc.ms;
    out[`${k}:load_gc_max_ms`] = loadGc.max;
    out[`${k}:load_eld_p99_ms`] = loadEld.percentile(99) / 1e6;
    out[`${k}:load_eld_max_ms`] = loadEld.max / 1e6;
    out[`${k}:load_heap_mb`] = process.memoryUsage().heapUsed / 1e6;
    for (const [phase, ms] of Object.entries(traced?.marks ?? {})) out[`${k}:trace_${phase}_ms`] = ms;
    // Systems that trace on the server (postbox): every sampled message's segments, and the
    // server's event loop, GC and store time over the window.
    if (traceEnd?.server) {
      for (const [name, v] of Object.entries(breakdown(timelines, traceEnd.server))) out[`${k}:${name}`] = v;
      for (const [name, v] of Object.entries(traceEnd.loop)) out[`${k}:${name}`] = v;
    }
    for (const [name, s] of Object.entries(lat)) {
      if (s.length === 0) continue;
      const [p50, p99, p999] = s.percentiles(PS);
      Object.assign(out, {
        [`${k}:${name}_p50_ms`]: p50,
        [`${k}:${name}_p99_ms`]: p99,
        [`${k}:${name}_p999_ms`]: p999,
      });
    }
    await sleep(200);
  }
  gcObserver.disconnect();
  await client.close();
  if (lost > 0) out.undelivered_after_5s = lost;
  return out;
}
