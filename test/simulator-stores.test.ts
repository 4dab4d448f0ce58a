import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runSimulation } from '../src/testing/simulator.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { sqliteClientStore } from '../src/client/stores/sqlite.js';
import { openPostgresServerStore } from '../src/server/stores/postgres.js';
import { createMemoryServerState, memoryServerStore } from '../src/server/stores/memory.js';
import { memoryClusterHub } from '../src/server/cluster/local.js';
import type { AppendInput, AppendOutcome, ServerStore } from '../src/server/store.js';
import { usageDrift } from './fixtures/sqlite-usage.js';
import { backendDriver, driverStore } from '../src/server/store-kit.js';
import { createCopyingStorage, memoryBackend } from './fixtures/copying-driver.js';
import { describeWithServices, PG_URL, pgUnreachable, scratchSchemas } from './fixtures/services.js';

// The simulator runs on the stores an integrator passes in: the same seeded faults and the same
// invariant checks as on the built-in memory stores. Failing seeds replay with the seed printed.
const SEEDS = Number(process.env.SIM_STORE_SEEDS ?? 4);

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const scratch = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'pb-sim-'));
  dirs.push(d);
  return d;
};

async function failingSeeds(
  seeds: number[],
  run: (seed: number) => ReturnType<typeof runSimulation>,
): Promise<string[]> {
  const failures: string[] = [];
  for (const seed of seeds) {
    const r = await run(seed);
    expect(r.stats.acked).toBeGreaterThan(0);
    if (r.violations.length > 0) failures.push(`seed ${seed}:\n  ${r.violations.slice(0, 5).join('\n  ')}`);
  }
  return failures;
}

const range = (n: number, from = 1): number[] => Array.from({ length: n }, (_, i) => from + i);

describe('the simulator runs on the stores it is given', () => {
  it('no loss, no duplicates, per-sender order and exact group audiences on SQLite server and client stores, under faults; inbox usage counters match the inboxes', async () => {
    const drift: string[] = [];
    const failures = await failingSeeds(range(SEEDS), async (seed) => {
      const dir = scratch();
      const r = await runSimulation({
        seed,
        steps: 150,
        serverStore: () => sqliteServerStore({ path: join(dir, 'server.db') }),
        // Every start reopens the device's file: an app killed and started again.
        clientStore: (d) => sqliteClientStore({ path: join(dir, `${d.user}-${d.device}.db`) }),
      });
      const wrong = usageDrift(join(dir, 'server.db'));
      if (wrong.length > 0) drift.push(`seed ${seed}: ${JSON.stringify(wrong.slice(0, 3))}`);
      return r;
    });
    expect(failures).toEqual([]);
    expect(drift).toEqual([]);
  });

  it('what expiry drops is shown or reported expired, never both, on SQLite server and client stores; inbox usage counters match the inboxes', async () => {
    let dropped = 0;
    const drift: string[] = [];
    const failures = await failingSeeds(range(SEEDS), async (seed) => {
      const dir = scratch();
      const r = await runSimulation({
        seed,
        steps: 150,
        expiry: true,
        serverStore: () => sqliteServerStore({ path: join(dir, 'server.db') }),
        clientStore: (d) => sqliteClientStore({ path: join(dir, `${d.user}-${d.device}.db`) }),
      });
      dropped += r.stats.expiredEntries;
      const wrong = usageDrift(join(dir, 'server.db'));
      if (wrong.length > 0) drift.push(`seed ${seed}: ${JSON.stringify(wrong.slice(0, 3))}`);
      return r;
    });
    expect(failures).toEqual([]);
    expect(drift).toEqual([]);
    expect(dropped).toBeGreaterThan(0);
  });

  it('no loss, no duplicates, per-sender order and exact group audiences on the store kit over a network backend (every call loaded in rounds, committed on a condition), under faults, with expiry, on one node and three', async () => {
    const backend = () =>
      driverStore(backendDriver(memoryBackend(createCopyingStorage())), { name: 'backend' });
    let dropped = 0;
    const failures = [
      ...(await failingSeeds(range(SEEDS, 200), (seed) =>
        runSimulation({ seed, steps: 150, serverStore: backend }),
      )),
      ...(await failingSeeds(range(SEEDS, 300), async (seed) => {
        const r = await runSimulation({ seed, steps: 150, expiry: true, serverStore: backend });
        dropped += r.stats.expiredEntries;
        return r;
      })),
      ...(await failingSeeds(range(SEEDS, 400), (seed) =>
        runSimulation({ seed, steps: 150, nodes: 3, serverStore: backend }),
      )),
    ];
    expect(failures).toEqual([]);
    expect(dropped).toBeGreaterThan(0);
  });

  it('a cluster adapter passed in carries the doorbells between three gateways', async () => {
    const failures = await failingSeeds(range(3, 100), (seed) => {
      let hub: ReturnType<typeof memoryClusterHub> | undefined;
      return runSimulation({
        seed,
        steps: 150,
        nodes: 3,
        cluster: (clock) => (hub ??= memoryClusterHub({ clock, ttlMs: 3000 })).node(),
      });
    });
    expect(failures).toEqual([]);
  });

  it('a deliberately broken server store (it acks a message it never keeps) is caught', async () => {
    // The integrator's bug: every fifth 1:1 message is reported committed but never written.
    const lossy = (): ServerStore => {
      const inner = memoryServerStore({ state: createMemoryServerState() });
      const broken: ServerStore = Object.create(inner) as ServerStore;
      let n = 0;
      broken.append = async (batch: AppendInput[], now: number): Promise<AppendOutcome[]> => {
        const dropped = batch.map((i) => i.kind === 'msg' && !i.group && n++ % 5 === 4);
        const written = await inner.append(
          batch.filter((_, i) => !dropped[i]),
          now,
        );
        let w = 0;
        return batch.map((_, i) =>
          dropped[i] ? { ok: true, ts: now, duplicate: false, notify: [] } : written[w++]!,
        );
      };
      return broken;
    };
    const results = await Promise.all(
      range(4).map((seed) => runSimulation({ seed, steps: 120, faultLevel: 0, serverStore: lossy })),
    );
    const losses = results.flatMap((r) => r.violations).filter((v) => /no loss/.test(v));
    expect(losses.length).toBeGreaterThan(0);
  });
});

const pgReason = await pgUnreachable();

describeWithServices('the simulator on the PostgreSQL server store', pgReason, () => {
  const freshSchema = scratchSchemas('pb_sim');

  it('no loss, no duplicates, per-sender order and exact group audiences on PostgreSQL, under faults', async () => {
    const failures = await failingSeeds(range(3), (seed) => {
      const schema = freshSchema();
      return runSimulation({
        seed,
        steps: 120,
        serverStore: () => openPostgresServerStore({ connectionString: PG_URL, schema, poolSize: 4 }),
      });
    });
    expect(failures).toEqual([]);
  }, 120_000);
});
