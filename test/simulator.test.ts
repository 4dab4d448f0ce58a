import { describe, expect, it } from 'vitest';
import { runSimulation } from '../src/testing/simulator.js';

// CI runs SIM_SEEDS seeds (default 200); `npm run sim -- --seeds 10000` runs more.
const SEEDS = Number(process.env.SIM_SEEDS ?? 200);
const CHUNK = 25;

describe('the delivery invariants hold under faults, for every seed', () => {
  for (let start = 1; start <= SEEDS; start += CHUNK) {
    const end = Math.min(SEEDS, start + CHUNK - 1);
    it(`no loss, no duplicates, per-sender order, monotone receipts, exact group audiences, converging group views: seeds ${start}..${end}`, async () => {
      const failures: string[] = [];
      for (let seed = start; seed <= end; seed++) {
        const r = await runSimulation({ seed });
        expect(r.stats.sent).toBeGreaterThan(0);
        if (r.violations.length > 0) {
          failures.push(
            `seed ${seed} (replay: npm run sim -- --seed ${seed} --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
          );
        }
      }
      expect(failures).toEqual([]);
    });
  }

  it('a seed replays exactly', async () => {
    const a = await runSimulation({ seed: 4242 });
    const b = await runSimulation({ seed: 4242 });
    expect(b).toEqual(a);
  });

  it('faults really happen in the simulated runs', async () => {
    const totals = {
      cuts: 0,
      halfOpens: 0,
      clientRestarts: 0,
      serverRestarts: 0,
      acked: 0,
      groupSent: 0,
      membershipChanges: 0,
    };
    for (let seed = 1; seed <= 20; seed++) {
      const r = await runSimulation({ seed });
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.stats[k];
    }
    expect(totals.cuts).toBeGreaterThan(0);
    expect(totals.halfOpens).toBeGreaterThan(0);
    expect(totals.clientRestarts).toBeGreaterThan(0);
    expect(totals.serverRestarts).toBeGreaterThan(0);
    expect(totals.acked).toBeGreaterThan(100);
    // Groups and membership changes concurrent with sends are part of every run's mix.
    expect(totals.groupSent).toBeGreaterThan(50);
    expect(totals.membershipChanges).toBeGreaterThan(20);
  });
});

// Several gateway nodes over one store and an in-memory cluster: connects land on random nodes,
// nodes crash one at a time (their registrations linger until the TTL), and doorbells between
// nodes are dropped for stretches, so delivery across nodes has to survive lost hints.
const CLUSTER_SEEDS = Number(process.env.SIM_CLUSTER_SEEDS ?? 150);

describe('the delivery invariants hold across three gateway nodes, for every seed', () => {
  it(`no loss, no duplicates, per-sender order, monotone receipts, exact group audiences: seeds 1..${CLUSTER_SEEDS}, 3 nodes`, async () => {
    const failures: string[] = [];
    const totals = { sent: 0, serverRestarts: 0, doorbellOutages: 0 };
    for (let seed = 1; seed <= CLUSTER_SEEDS; seed++) {
      const r = await runSimulation({ seed, nodes: 3 });
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.stats[k];
      if (r.violations.length > 0) {
        failures.push(
          `seed ${seed} (replay: npm run sim -- --seed ${seed} --nodes 3 --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
        );
      }
    }
    expect(failures).toEqual([]);
    // The faults that make it a multi-node test really happened.
    expect(totals.sent).toBeGreaterThan(CLUSTER_SEEDS * 50);
    expect(totals.serverRestarts).toBeGreaterThan(CLUSTER_SEEDS);
    expect(totals.doorbellOutages).toBeGreaterThan(CLUSTER_SEEDS / 2);
  }, 300_000);

  it('a multi-node seed replays exactly', async () => {
    const a = await runSimulation({ seed: 99, nodes: 3 });
    const b = await runSimulation({ seed: 99, nodes: 3 });
    expect(b).toEqual(a);
  });
});

// Users the app registered before any device of theirs existed: their one device connects for the
// first time mid-run, on any node, and must get everything that waited for it, once, in order.
const LATE_SEEDS = Number(process.env.SIM_LATE_SEEDS ?? 40);

describe('the delivery invariants hold for users whose first device comes later, for every seed', () => {
  it(`no loss, no duplicates, per-sender order, exact group audiences with pending inboxes: seeds 1..${LATE_SEEDS}, 1 and 3 nodes`, async () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= LATE_SEEDS; seed++) {
      const nodes = seed % 3 === 0 ? 3 : 1;
      const lateUsers = 1 + (seed % 2);
      const r = await runSimulation({ seed, nodes, lateUsers });
      if (r.violations.length > 0) {
        failures.push(
          `seed ${seed} (replay: npm run sim -- --seed ${seed} --nodes ${nodes} --late-users ${lateUsers} --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
        );
      }
    }
    expect(failures).toEqual([]);
  }, 300_000);
});

// The same invariants with the Signal protocol on every device: disconnects, restarts from the
// stores, duplicates and store faults, and every message must still decrypt (a message that did
// not would be missing). Fewer seeds: libsignal's key generation and ratchets are real work.
const E2EE_SEEDS = Number(process.env.SIM_E2EE_SEEDS ?? 25);

describe('the delivery invariants hold with end-to-end encryption (libsignal), for every seed', () => {
  it(`no loss, no duplicates, per-sender order, monotone receipts, every message decrypted: seeds 1..${E2EE_SEEDS}`, async () => {
    const { libsignalCrypto } = await import('../src/crypto/libsignal.js');
    const failures: string[] = [];
    let sent = 0;
    for (let seed = 1; seed <= E2EE_SEEDS; seed++) {
      const r = await runSimulation({ seed, steps: 120, crypto: () => libsignalCrypto() });
      sent += r.stats.sent;
      if (r.violations.length > 0) {
        failures.push(
          `seed ${seed} (replay: npm run sim -- --seed ${seed} --crypto --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
        );
      }
    }
    expect(sent).toBeGreaterThan(E2EE_SEEDS * 10);
    expect(failures).toEqual([]);
  }, 600_000);
});

// Retention expiry as a fault: at seeded steps some devices go away while time moves past a short
// retention, and the server drops what they had not fetched. The app must be told exactly that.
const EXPIRY_SEEDS = Number(process.env.SIM_EXPIRY_SEEDS ?? 100);

describe('what expiry drops is shown or reported expired, never both, for every seed', () => {
  it(`every dropped message is shown or covered by an expired gap on its device, never both; every gap has a reason and covers only what was dropped: seeds 1..${EXPIRY_SEEDS}, and with 3 nodes, late users and libsignal`, async () => {
    const failures: string[] = [];
    const totals = { expiries: 0, expiredEntries: 0 };
    const variants = [
      ...Array.from({ length: EXPIRY_SEEDS }, (_, i) => ({ seed: i + 1, more: '' })),
      ...Array.from({ length: Math.ceil(EXPIRY_SEEDS / 3) }, (_, i) => ({
        seed: i + 1,
        nodes: 3,
        more: ' --nodes 3',
      })),
      ...Array.from({ length: Math.ceil(EXPIRY_SEEDS / 5) }, (_, i) => ({
        seed: i + 1,
        lateUsers: 2,
        more: ' --late-users 2',
      })),
    ];
    for (const { more, ...v } of variants) {
      const r = await runSimulation({ ...v, expiry: true });
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.stats[k];
      if (r.violations.length > 0) {
        failures.push(
          `seed ${v.seed} (replay: npm run sim -- --seed ${v.seed} --expiry${more} --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
        );
      }
    }
    const { libsignalCrypto } = await import('../src/crypto/libsignal.js');
    for (let seed = 1; seed <= Math.ceil(EXPIRY_SEEDS / 10); seed++) {
      const r = await runSimulation({ seed, steps: 120, expiry: true, crypto: () => libsignalCrypto() });
      if (r.violations.length > 0) {
        failures.push(
          `seed ${seed} (replay: npm run sim -- --seed ${seed} --expiry --crypto --trace):\n  ${r.violations.slice(0, 5).join('\n  ')}`,
        );
      }
    }
    expect(failures).toEqual([]);
    // Expiry really struck: several times a run, dropping messages devices had not fetched.
    expect(totals.expiries).toBeGreaterThan(variants.length * 2);
    expect(totals.expiredEntries).toBeGreaterThan(variants.length * 4);
  }, 600_000);

  it('an expiry seed replays exactly', async () => {
    const a = await runSimulation({ seed: 7, expiry: true });
    const b = await runSimulation({ seed: 7, expiry: true });
    expect(a.stats.expiredEntries).toBeGreaterThan(0);
    expect(b).toEqual(a);
  });
});
