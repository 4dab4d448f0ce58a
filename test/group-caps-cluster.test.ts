// The per-user group caps (creations per hour, joins per day) count through the store when it
// declares `actionCounts`, so the nodes of a cluster count together: N nodes allow each cap once,
// not N times. A store without it falls back to each node's own counts.
import { describe, expect, it } from 'vitest';
import { GroupCaps } from '../src/server/group-consent.js';
import type { ServerStore } from '../src/server/store.js';
import { createMemoryServerState, memoryServerStore } from '../src/server/stores/memory.js';

const caps = { maxGroupCreatesPerHour: 3, maxGroupJoinsPerDay: 2 };

/** Creations by `user` through each node in turn, at once: how many were allowed. */
async function allowedCreates(nodes: GroupCaps[], n: number): Promise<number> {
  const got = await Promise.all(
    Array.from({ length: n }, (_, i) => nodes[i % nodes.length]!.create('mallory', 1000)),
  );
  return got.filter(Boolean).length;
}

describe('group caps across nodes', () => {
  it('three nodes on one store allow a user its creations per hour once, not once per node', async () => {
    const state = createMemoryServerState();
    const nodes = [0, 1, 2].map(() => new GroupCaps(caps, memoryServerStore({ state })));
    expect(await allowedCreates(nodes, 12)).toBe(3);
  });

  it('three nodes on one store allow a user its joins per day once, each join counted once', async () => {
    const state = createMemoryServerState();
    const nodes = [0, 1, 2].map(() => new GroupCaps(caps, memoryServerStore({ state })));
    const joins = await Promise.all(nodes.map((n) => n.join(['bob', 'carol'], 5000)));
    expect(joins.flat().filter(Boolean)).toHaveLength(4); // two each for bob and carol
    expect(await nodes[0]!.join(['dave'], 5000)).toEqual([true]);
  });

  it('a store that does not declare action counts leaves each node to count on its own', async () => {
    const state = createMemoryServerState();
    const plain = (): ServerStore => ({
      ...memoryServerStore({ state }),
      capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true },
    });
    const nodes = [0, 1, 2].map(() => new GroupCaps(caps, plain()));
    expect(await allowedCreates(nodes, 12)).toBe(9);
  });
});
