// Finds the load process's long stretches in a V8 .cpuprofile (from `npm run bench -- --profile
// DIR`): runs of samples, at least MS long, in which the pacing loop's `tick` (bench/scenarios/
// latency.mjs) never ran — the moments a paced scenario's sends and deliveries wait behind other
// work. For each stretch it prints its length and the functions most of it was spent under
// (inclusive), so a latency tail can be named: GC, a burst of frames, timers firing together.
//   node bench/tools/long-tasks.mjs FILE.cpuprofile [MS=8] [TOP=8]
import { readFileSync } from 'node:fs';

const [file, msArg, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/tools/long-tasks.mjs FILE.cpuprofile [MS] [TOP]');
  process.exit(2);
}
const minMs = Number(msArg ?? 8);
const top = Number(topArg ?? 8);
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

const label = (node) => {
  const cf = node.callFrame;
  const where = cf.url
    ? `${cf.url.replace(/^file:\/\/.*?node_modules\//, '').replace(/^file:\/\/.*?\/(dist|bench)\//, '$1/')}:${cf.lineNumber + 1}`
    : '';
  return `${cf.functionName || '(anonymous)'} ${where}`.trim();
};
const stackOf = (id) => {
  const out = [];
  for (let at = id; at !== undefined; at = parent.get(at)) out.push(byId.get(at));
  return out;
};
const isTick = (stack) => stack.some((n) => n.callFrame.functionName === 'tick');

// Walk the samples; a stretch starts after a `tick` sample and ends at the next one.
const stretches = [];
let t = profile.startTime;
let from;
let samples = [];
for (let i = 0; i < profile.samples.length; i++) {
  t += profile.timeDeltas[i] ?? 0;
  const stack = stackOf(profile.samples[i]);
  if (isTick(stack)) {
    if (from !== undefined && (t - from) / 1000 >= minMs) stretches.push({ from, to: t, samples });
    from = t;
    samples = [];
  } else samples.push({ stack, d: profile.timeDeltas[i + 1] ?? 0 });
}
const t0 = profile.startTime;
// A stretch mostly idle is the scenario waiting (between rates, for the last ✓✓), not a stall.
const idleShare = (s) => {
  let idle = 0;
  let all = 0;
  for (const { stack, d } of s.samples) {
    all += d;
    if (stack[0].callFrame.functionName === '(idle)') idle += d;
  }
  return idle / Math.max(1, all);
};
const busy = stretches.filter((s) => idleShare(s) < 0.5).sort((a, b) => b.to - b.from - (a.to - a.from));
console.log(`${file}: ${busy.length} busy stretches of ${minMs} ms or more without the pacing tick`);
for (const s of busy.slice(0, Number(process.env.LONG_TASKS_SHOW ?? 12))) {
  const inclusive = new Map();
  const self = new Map();
  let total = 0;
  for (const { stack, d } of s.samples) {
    total += d;
    for (const key of new Set(stack.map(label))) inclusive.set(key, (inclusive.get(key) ?? 0) + d);
    const leaf = label(stack[0]);
    self.set(leaf, (self.get(leaf) ?? 0) + d);
  }
  const selfTop = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([k, v]) => `${k} ${((100 * v) / Math.max(1, total)).toFixed(0)}%`);
  const rows = [...inclusive.entries()]
    .filter(([k]) => k !== '(root)')
    .sort((a, b) => b[1] - a[1])
    .slice(0, top);
  console.log(`\n@${((s.from - t0) / 1e6).toFixed(3)} s: ${((s.to - s.from) / 1000).toFixed(1)} ms`);
  console.log(`  self: ${selfTop.join(', ')}`);
  for (const [k, v] of rows)
    console.log(`  ${((100 * v) / Math.max(1, total)).toFixed(0).padStart(3)}%  ${k}`);
}
