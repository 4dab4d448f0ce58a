/**
 * The many-user key claim of the {@link ServerStore} contract ("Key directory"): the server claims
 * a whole `kget` frame with one `claimKeys` call, and that call keeps every guarantee of claiming
 * the users one by one. Part of `serverStoreConformance`; kept apart so each file stays readable.
 * @internal
 */
import assert from 'node:assert/strict';
import type { DeviceAddress, KeyBundle, ServerStore } from '../server/store.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';
import { bundleOf, describeBundle, devKey, giveKeys, noKeys, upload } from './key-fixtures.js';

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
const carol1: DeviceAddress = { user: 'carol', device: 'c1' };

async function register(store: ServerStore, ...devices: DeviceAddress[]): Promise<void> {
  for (const d of devices) await store.registerDevice(d, 1);
}

/** The one-time EC and Kyber key ids handed out for `d` across `bundles`, sorted. */
function handedOut(bundles: KeyBundle[], d: DeviceAddress): { ec: number[]; kyber: number[] } {
  const mine = bundles.filter((b) => devKey(b) === devKey(d));
  const sorted = (ids: number[]) => ids.sort((a, b) => a - b);
  return {
    ec: sorted(mine.flatMap((b) => (b.preKey ? [b.preKey.id] : []))),
    kyber: sorted(mine.flatMap((b) => (b.kyberPreKey.id === 9000 ? [] : [b.kyberPreKey.id]))),
  };
}

/** The many-user claim cases, for {@link ServerStore} adapters (run by `serverStoreConformance`). */
export function keyClaimCases(subject: {
  open(): Promise<ServerStore>;
  reopen(store: ServerStore): Promise<ServerStore>;
  share?(store: ServerStore): Promise<ServerStore>;
}): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = storeCaseBuilder(subject, cases);

  test('a claim naming many users gets each named user’s bundles once, in the order first named, and skips users without keys', async ({
    store,
  }) => {
    await register(store, alice1, bob1, bob2, carol1);
    await giveKeys(store, bob1, bob2, carol1);
    const claimed = await store.claimKeys(['carol', 'nobody', 'bob', 'alice', 'carol']);
    assert.deepEqual(claimed.map(describeBundle), [
      bundleOf(carol1, 1, 1, 101),
      bundleOf(bob1, 1, 1, 101),
      bundleOf(bob2, 1, 1, 101),
    ]);
    for (const d of [bob1, bob2, carol1]) {
      assert.deepEqual(
        await store.keyCount(d),
        { preKeys: 2, kyberPreKeys: 1 },
        `${devKey(d)}: one key of each kind taken, though carol was named twice`,
      );
    }
    assert.deepEqual(await store.claimKeys([]), [], 'naming nobody claims nothing');
    assert.deepEqual(
      (await store.claimKeys(['bob'])).map(describeBundle),
      [bundleOf(bob1, 1, 2, 102), bundleOf(bob2, 1, 2, 102)],
      'a list of one user is that user',
    );
  });

  test('a claim naming many users with a device id claims only the device of that id of each user', async ({
    store,
  }) => {
    const carolB1: DeviceAddress = { user: 'carol', device: 'b1' };
    await register(store, bob1, bob2, carolB1);
    await giveKeys(store, bob1, bob2, carolB1);
    assert.deepEqual((await store.claimKeys(['bob', 'carol'], 'b1')).map(describeBundle), [
      bundleOf(bob1, 1, 1, 101),
      bundleOf(carolB1, 1, 1, 101),
    ]);
    assert.deepEqual(await store.keyCount(bob2), { preKeys: 3, kyberPreKeys: 2 }, 'b2 was not claimed from');
  });

  test('a claim naming many users asks the one-time budget once per device, with its user, and leaves refused devices’ keys', async ({
    store,
  }) => {
    await register(store, bob1, bob2, carol1);
    await giveKeys(store, bob1, bob2, carol1);
    const asked: string[] = [];
    const oneTime = (device: string, user: string) => (asked.push(`${user}/${device}`), user === 'carol');
    const claimed = await store.claimKeys(['bob', 'carol'], undefined, { oneTime });
    assert.deepEqual(claimed.map(describeBundle), [
      bundleOf(bob1, 1, undefined, undefined),
      bundleOf(bob2, 1, undefined, undefined),
      bundleOf(carol1, 1, 1, 101),
    ]);
    assert.deepEqual(asked, ['bob/b1', 'bob/b2', 'carol/c1'], 'asked once per device claimed');
    assert.deepEqual(
      await store.keyCount(bob1),
      { preKeys: 3, kyberPreKeys: 2 },
      'bob’s devices kept their keys',
    );
    assert.deepEqual(await store.keyCount(bob2), { preKeys: 3, kyberPreKeys: 2 });
    assert.deepEqual(await store.keyCount(carol1), { preKeys: 2, kyberPreKeys: 1 });
  });

  test('a one-time key is never handed out twice while many-user and one-user claims race, on one node and across nodes', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 2; i++) others.push(await subject.share(h.store));
    const nodes = [h.store, ...others];
    try {
      const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);
      await register(h.store, bob1, bob2, carol1);
      for (const d of [bob1, bob2, carol1])
        await h.store.putKeys(d, upload(d, { pre: ids(1, 30), kyber: ids(101, 15) }));
      // Every node claims in turn: both users in either order, or bob's first device alone.
      const claims = await Promise.all(
        Array.from({ length: 60 }, (_, i) => {
          const node = nodes[i % nodes.length]!;
          if (i % 3 === 0) return node.claimKeys(['bob', 'carol']);
          if (i % 3 === 1) return node.claimKeys(['carol', 'bob']);
          return node.claimKeys('bob', 'b1');
        }),
      );
      const bundles = claims.flat();
      assert.equal(
        bundles.filter((b) => devKey(b) === 'bob/b1').length,
        60,
        'every claim got a bundle for b1',
      );
      assert.equal(bundles.filter((b) => devKey(b) === 'carol/c1').length, 40);
      assert.deepEqual(
        handedOut(bundles, bob1),
        { ec: ids(1, 30), kyber: ids(101, 15) },
        'b1: each key exactly once',
      );
      assert.deepEqual(
        handedOut(bundles, bob2),
        { ec: ids(1, 30), kyber: ids(101, 15) },
        'b2: each key exactly once',
      );
      assert.deepEqual(
        handedOut(bundles, carol1),
        { ec: ids(1, 30), kyber: ids(101, 15) },
        'c1: each key exactly once',
      );
      for (const d of [bob1, bob2, carol1]) assert.deepEqual(await h.store.keyCount(d), noKeys);
    } finally {
      for (const n of others) await n.close();
    }
  });

  return cases;
}
