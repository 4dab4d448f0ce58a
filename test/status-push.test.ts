// A store that reports the status entries it wrote (NotifyResult.entries) lets the engine push a
// `delivered` status to the sender at once, without reading the sender's inbox back (issue 23);
// a store that does not, or a sender that cannot take it right now, gets it by the usual read.
import { afterEach, describe, expect, it } from 'vitest';
import { countingStore, makeWorld, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

describe('statuses pushed as written', () => {
  /** Alice sends to Bob, who acks at once; how often Alice's inbox was read meanwhile. */
  async function readsUntilDelivered(plain: boolean): Promise<number> {
    const { store, readsOf } = countingStore(plain);
    world = await makeWorld({ openStore: () => store });
    const alice = await world.device('alice');
    await world.device('bob');
    await world.advance(100);
    const before = readsOf('alice/phone');
    const id = await alice.client.send('bob', text('hi'));
    await world.advance(200);
    expect(alice.statusOf(id)).toBe('delivered');
    return readsOf('alice/phone') - before;
  }

  it('the sender gets delivered without its inbox being read again', async () => {
    expect(await readsUntilDelivered(false)).toBe(0);
  });

  it('without entries from the store, the sender reads the status back as before', async () => {
    expect(await readsUntilDelivered(true)).toBeGreaterThan(0);
  });

  it('a sender that is offline when the status is written gets it on its next connection, in order', async () => {
    const { store } = countingStore();
    world = await makeWorld({ openStore: () => store });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await bob.client.close();
    const ids = [await alice.client.send('bob', text('1')), await alice.client.send('bob', text('2'))];
    await world.advance(200);
    await alice.client.close();
    bob.client.start();
    await world.advance(200);
    alice.client.start();
    await world.advance(300);
    expect(ids.map((i) => alice.statusOf(i))).toEqual(['delivered', 'delivered']);
  });
});
