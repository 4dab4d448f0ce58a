/**
 * The action counts of the {@link ServerStore} contract (`countActions`, declared by the
 * `actionCounts` capability): the engine's per-user group caps count through them, so every node
 * of a cluster counts together. Part of `serverStoreConformance`; kept apart so each file stays
 * readable.
 * @internal
 */
import assert from 'node:assert/strict';
import type { ServerStore } from '../server/store.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';
import type { ServerStoreSubject } from './server-store-conformance.js';

const HOUR = 3600_000;

/** The action-count cases, for {@link ServerStore} adapters (run by `serverStoreConformance`). */
export function actionCountCases(subject: ServerStoreSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const build = storeCaseBuilder(subject, cases);
  // Only for a store that declares them: without, the engine counts on each node.
  const test: typeof build = (name, body) => {
    build(name, body);
    cases[cases.length - 1]!.needs = ['actionCounts'];
  };

  test('action counts go up per kind and user within a window, and start over in the next window', async ({
    store,
  }) => {
    const count = store.countActions!.bind(store);
    assert.deepEqual(await count('group-join', ['bob', 'carol'], HOUR, 10 * HOUR + 5), [1, 1]);
    assert.deepEqual(await count('group-join', ['carol', 'dave', 'bob'], HOUR, 10 * HOUR + 99), [2, 1, 2]);
    assert.deepEqual(await count('group-create', ['bob'], HOUR, 10 * HOUR + 100), [1], 'kinds count apart');
    assert.deepEqual(await count('group-join', ['bob'], HOUR, 11 * HOUR), [1], 'a new window at the hour');
    assert.deepEqual(await count('group-join', [], HOUR, 11 * HOUR), []);
  });

  test('concurrent action counts from several nodes each see a different count: none is lost', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 2; i++) others.push(await subject.share(h.store));
    const nodes = [h.store, ...others];
    try {
      const seen = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          nodes[i % nodes.length]!.countActions!(
            'group-create',
            i % 2 ? ['bob', 'carol'] : ['carol', 'bob'],
            HOUR,
            5,
          ),
        ),
      );
      const bob = seen.map((c, i) => c[i % 2 ? 0 : 1]!).sort((a, b) => a - b);
      const carol = seen.map((c, i) => c[i % 2 ? 1 : 0]!).sort((a, b) => a - b);
      const all = Array.from({ length: 30 }, (_, i) => i + 1);
      assert.deepEqual(bob, all, 'bob: 1 to 30, each once');
      assert.deepEqual(carol, all, 'carol: 1 to 30, each once');
    } finally {
      for (const n of others) await n.close();
    }
  });

  return cases;
}
