// Keyless recipients (docs/encryption.md, "A new contact: when can I write?"): with end-to-end
// encryption, a send to a user whose devices have not published keys yet is held in the outbox,
// pending, until the keys come (then it goes, in order) or keyWaitMs passes (then it fails with
// no_keys); other conversations go on meanwhile, and keysReady tells the app when it can write.
// On the real libsignal adapter, in virtual time.
import { afterEach, describe, expect, it } from 'vitest';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { isPostboxError } from '../src/protocol/index.js';
import { makeWorld, settled, text, untext, until, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const texts = (d: TestDevice) => d.messages.map((m) => untext(m.body));
const signal = () => makeWorld({ crypto: () => libsignalCrypto() });

/** Advances virtual time in steps, letting the real crypto work run between them. */
async function wait(w: World, ms: number): Promise<void> {
  for (let t = 0; t < ms; t += 100) {
    await w.advance(100);
    await new Promise((r) => setImmediate(r));
  }
}

describe('sends to recipients without keys', () => {
  it('a send to a user without keys is held and delivered once their keys appear', async () => {
    world = await signal();
    const alice = await world.device('alice');
    // Bob's phone is registered (it connected) but has not published keys yet.
    await world.server.registerDevice('bob', 'phone');
    await wait(world, 500);
    const first = await alice.client.send('bob', text('one'));
    const second = await alice.client.send('bob', text('two'));
    await wait(world, 5_000);
    expect(alice.statusOf(first)).toBe('pending');
    expect(alice.statusOf(second)).toBe('pending');
    expect(alice.client.unsent).toBe(2);
    expect(alice.errors).toEqual([]);
    // Bob's phone comes up and publishes its keys: the held messages go, in order.
    const bob = await world.device('bob');
    await until(world, () => alice.statusOf(first) === 'delivered' && alice.statusOf(second) === 'delivered');
    await until(world, () => bob.messages.length === 2);
    expect(texts(bob)).toEqual(['one', 'two']);
    expect(alice.client.unsent).toBe(0);
    // A later message needs no wait.
    await alice.client.send('bob', text('three'));
    await until(world, () => texts(bob).includes('three'));
    expect(texts(bob)).toEqual(['one', 'two', 'three']);
  });

  it('a group message is not held for a member without keys: it goes at once, and that member gets it through a resend once its keys are up', async () => {
    world = await signal();
    const alice = await world.device('alice', 'phone', { client: { keyWaitMs: 30_000 } });
    const carol = await world.device('carol');
    await world.server.registerDevice('bob', 'phone'); // registered, no keys yet
    await wait(world, 500);
    const g = await settled(world, alice.client.createGroup('club', ['bob', 'carol']));
    await wait(world, 500);
    const id = await alice.client.sendToGroup(g, text('hello all'));
    await until(world, () => texts(carol).includes('hello all'));
    expect(alice.statusOf(id)).not.toBe('pending'); // committed, not held behind bob's keys
    // Past keyWaitMs: nothing fails, there was nothing to hold.
    await wait(world, 31_000);
    expect(alice.statusOf(id)).not.toBe('failed');
    // Bob's phone comes up and publishes its keys; it has no sender key for the waiting message,
    // asks alice's device again and gets it over a fresh pairwise session.
    const bob = await world.device('bob');
    await until(world, () => texts(bob).includes('hello all'));
    expect(bob.undecryptable).toEqual([]);
  });

  it('a send to a user who never uploads keys fails with no_keys after keyWaitMs', async () => {
    world = await signal();
    const alice = await world.device('alice', 'phone', { client: { keyWaitMs: 30_000 } });
    await world.server.registerDevice('bob', 'phone');
    await wait(world, 500);
    const id = await alice.client.send('bob', text('hello?'));
    await wait(world, 25_000);
    expect(alice.statusOf(id)).toBe('pending');
    await until(world, () => alice.statusOf(id) === 'failed');
    const failed = alice.statuses.find((s) => s.id === id && s.status === 'failed')!;
    expect(failed.reason).toBe('no_keys');
    expect(failed.detail).toContain('bob');
    expect(await alice.client.messageInfo(id)).toMatchObject({ status: 'failed', reason: 'no_keys' });
    expect(alice.errors).toEqual([]);
    // A user with no device at all is not waited for: unknown_recipient at once, as before.
    const nobody = await alice.client.send('nobody', text('hi'));
    await until(world, () => alice.statusOf(nobody) === 'failed');
    expect(alice.statuses.find((s) => s.id === nobody && s.status === 'failed')?.reason).toBe(
      'unknown_recipient',
    );
  });

  it('held keyless sends do not block other conversations', async () => {
    world = await signal();
    const alice = await world.device('alice');
    const carol = await world.device('carol');
    await world.server.registerDevice('bob', 'phone');
    await wait(world, 500);
    const toBob: string[] = [];
    const toCarol: string[] = [];
    for (let i = 0; i < 5; i++) {
      toBob.push(await alice.client.send('bob', text(`bob ${i}`)));
      toCarol.push(await alice.client.send('carol', text(`carol ${i}`)));
    }
    await until(world, () => toCarol.every((id) => alice.statusOf(id) === 'delivered'));
    expect(texts(carol)).toEqual([0, 1, 2, 3, 4].map((i) => `carol ${i}`));
    expect(toBob.every((id) => alice.statusOf(id) === 'pending')).toBe(true);
    // Sent while bob's are held: goes at once too.
    await alice.client.send('carol', text('carol 5'));
    await until(world, () => texts(carol).includes('carol 5'));
    // Later messages to bob queue behind the held ones and keep their order.
    toBob.push(await alice.client.send('bob', text('bob 5')));
    const bob = await world.device('bob');
    await until(world, () => bob.messages.length === 6);
    expect(texts(bob)).toEqual([0, 1, 2, 3, 4, 5].map((i) => `bob ${i}`));
    await until(world, () => toBob.every((id) => alice.statusOf(id) === 'delivered'));
  });

  it('a held send goes as soon as the recipient publishes keys, without waiting for the next ask', async () => {
    world = await signal();
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone');
    await wait(world, 500);
    const id = await alice.client.send('bob', text('one'));
    // Long enough for the asks to be a minute apart.
    await wait(world, 70_000);
    expect(alice.statusOf(id)).toBe('pending');
    const bob = await world.device('bob');
    // The server tells alice's session (kr) when bob's keys arrive: well before the next ask.
    await until(world, () => texts(bob).includes('one'), 10_000);
  });

  it('a held send waits across a reconnect and still goes in order', async () => {
    world = await signal();
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone');
    await wait(world, 500);
    await alice.client.send('bob', text('one'));
    await wait(world, 3_000);
    await alice.client.send('bob', text('two'));
    world.net.cutAll();
    await wait(world, 3_000);
    await alice.client.send('bob', text('three'));
    const bob = await world.device('bob');
    await until(world, () => bob.messages.length === 3);
    expect(texts(bob)).toEqual(['one', 'two', 'three']);
  });
});

describe('keysReady', () => {
  it('keysReady resolves when the recipient uploads keys', async () => {
    world = await signal();
    const alice = await world.device('alice');
    await wait(world, 500);
    let ready = false;
    // Bob has no device at all yet: keysReady waits for him too.
    const p = alice.client.keysReady('bob').then(() => (ready = true));
    await wait(world, 10_000);
    expect(ready).toBe(false);
    await world.device('bob');
    await until(world, () => ready);
    await p;
    // Known to have keys now: at once, and a send goes straight out.
    let again = false;
    void alice.client.keysReady('bob').then(() => (again = true));
    await wait(world, 200);
    expect(again).toBe(true);
  });

  it('keysReady rejects with no_keys after timeoutMs, with the reason on abort, and with closed on close', async () => {
    world = await signal();
    const alice = await world.device('alice');
    await wait(world, 500);
    const outcomes: unknown[] = [];
    void alice.client.keysReady('bob', { timeoutMs: 5_000 }).catch((e) => outcomes.push(e));
    await wait(world, 4_000);
    expect(outcomes).toEqual([]);
    await wait(world, 2_000);
    expect(outcomes.length).toBe(1);
    expect(isPostboxError(outcomes[0]) && outcomes[0].code).toBe('no_keys');
    const abort = new AbortController();
    void alice.client.keysReady('bob', { signal: abort.signal }).catch((e) => outcomes.push(e));
    abort.abort(new Error('left the screen'));
    await wait(world, 100);
    expect((outcomes[1] as Error).message).toBe('left the screen');
    void alice.client.keysReady('bob').catch((e) => outcomes.push(e));
    await alice.client.close();
    await wait(world, 100);
    expect(isPostboxError(outcomes[2]) && outcomes[2].code).toBe('closed');
  });

  it('without encryption keysReady resolves at once', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    await expect(alice.client.keysReady('bob')).resolves.toBeUndefined();
  });
});
