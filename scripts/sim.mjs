#!/usr/bin/env node
// Runs the seeded simulator over many seeds against the built package.
//   npm run sim -- --seeds 10000          seeds 1..10000
//   npm run sim -- --seed 1234 --trace    replay one seed with a trace of its actions
//   npm run sim -- --seeds 50 --crypto    with the libsignal adapter on every device (120 steps)
//   npm run sim -- --seeds 500 --nodes 3  three gateway nodes over an in-memory cluster
//   npm run sim -- --seeds 500 --late-users 2  two users registered before their first device
//   npm run sim -- --seeds 500 --expiry   retention expiry while devices are away (gap reasons)
import { runSimulation } from '../dist/testing/simulator.js';

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const one = flag('seed', undefined);
const count = flag('seeds', 1000);
const from = flag('from', 1);
const trace = args.includes('--trace');
const nodes = flag('nodes', 1);
const lateUsers = flag('late-users', 0);
const expiry = args.includes('--expiry');
const libsignal = args.includes('--crypto')
  ? (await import('../dist/crypto/libsignal.js')).libsignalCrypto
  : undefined;
const seeds = one !== undefined ? [one] : Array.from({ length: count }, (_, i) => from + i);

const started = Date.now();
let failed = 0;
const totals = {
  sent: 0,
  acked: 0,
  deliveries: 0,
  cuts: 0,
  halfOpens: 0,
  clientRestarts: 0,
  serverRestarts: 0,
  doorbellOutages: 0,
  expiries: 0,
  expiredEntries: 0,
  staleGroupViews: 0,
};
for (const seed of seeds) {
  const result = await runSimulation({
    seed,
    trace: trace ? (l) => console.log(l) : undefined,
    nodes,
    lateUsers,
    expiry,
    ...(libsignal ? { steps: 120, crypto: () => libsignal() } : {}),
  });
  for (const k of Object.keys(totals)) totals[k] += result.stats[k];
  if (result.violations.length > 0) {
    failed++;
    const more =
      (nodes > 1 ? ` --nodes ${nodes}` : '') +
      (lateUsers > 0 ? ` --late-users ${lateUsers}` : '') +
      (expiry ? ' --expiry' : '') +
      (libsignal ? ' --crypto' : '');
    console.log(`seed ${seed} FAILED (replay: npm run sim -- --seed ${seed}${more} --trace)`);
    for (const v of result.violations.slice(0, 10)) console.log(`  ${v}`);
  }
  if (seeds.length > 1 && seed % 500 === 0)
    console.log(`… ${seed - from + 1} seeds, ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
const secs = ((Date.now() - started) / 1000).toFixed(1);
console.log(`${seeds.length - failed} passed, ${failed} failed`);
console.log(`simulated ${seeds.length} seeds in ${secs} s: ${JSON.stringify(totals)}`);
process.exit(failed ? 1 : 0);
