// Who may act on whom: every frame that names another user's id is checked against what that
// user did (received the message, consented to the relation), and every limit is held per
// authenticated device or user, so reconnecting resets none of them. Each test is named after
// the guarantee it proves and would have caught the attack it is about.
import { afterEach, describe, expect, it } from 'vitest';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { makeWorld, text, type RawConnection, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** A raw connection that said hello as `user`/`device`. */
async function rawAs(w: World, user: string, device: string): Promise<RawConnection> {
  const raw = await w.raw(`${user}/${device}`);
  await raw.hello(user, device);
  return raw;
}

/** Advances the clock (letting real promises run: encryption does real work) until `done()`. */
async function until(w: World, done: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  for (let t = 0; t < ms && !(await done()); t += 20) {
    await w.advance(20);
    await new Promise((r) => setImmediate(r));
  }
  expect(await done()).toBe(true);
}

const errors = (raw: RawConnection) =>
  raw.frames.flatMap((f) => (f.t === 'err' ? [(f as { c: string }).c] : []));

describe('one-time prekeys cannot be drained, and a session can always be made', () => {
  it("an attacker's kget cannot take a device's one-time keys past its budget, and still gets a usable bundle", async () => {
    const w = (world = await makeWorld({ crypto: () => libsignalCrypto(), server: { keyLowWater: 0 } }));
    const bob = await w.device('bob', 'phone', { client: { preKeySupply: 20 } });
    const bobPhone = { user: 'bob', device: 'phone' };
    await until(w, async () => (await w.server.store.keyCount(bobPhone)) !== undefined);
    expect(await w.server.store.keyCount(bobPhone)).toEqual({ preKeys: 20, kyberPreKeys: 20 });
    await bob.client.close(); // offline: nothing tops the supply up while the attack runs
    // Six connections, each claiming bob's bundle 64 times in one frame, several frames each.
    let bundles = 0;
    for (let c = 0; c < 6; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let r = 1; r <= 4; r++) raw.send({ t: 'kget', r, u: Array.from({ length: 64 }, () => 'bob') });
      await w.advance(100);
      bundles += raw.frames.flatMap((f) => (f.t === 'kb' ? f.b : [])).length;
    }
    expect(bundles).toBeGreaterThan(0);
    const left = await w.server.store.keyCount(bobPhone);
    const budget = w.server.opts.maxOneTimeKeyClaimsPerDay;
    expect(left).toEqual({ preKeys: 20 - budget, kyberPreKeys: 20 - budget });
    // Mallory's own client still makes a session with bob (from the last-resort bundle) …
    const mallory = await w.device('mallory', 'phone');
    await mallory.client.send('bob', text('hello from mallory'));
    bob.client.start();
    await until(w, () => bob.messages.length === 1);
    expect(bob.messages.map((m) => m.from)).toEqual(['mallory']);
    expect(await w.server.store.keyCount(bobPhone)).toEqual(left);
    // … and anyone else still gets a one-time key.
    const carol = await w.device('carol', 'phone');
    await carol.client.send('bob', text('hello from carol'));
    await until(w, () => bob.messages.length === 2);
    expect(bob.messages.map((m) => m.from)).toEqual(['mallory', 'carol']);
    expect((await w.server.store.keyCount(bobPhone))?.preKeys).toBe(left!.preKeys - 1);
  });
});

describe('limits are held per device or user: reconnecting resets none of them', () => {
  it('the key-claim rate limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxKeyClaimsPer10s: 20 } }));
    await w.device('bob');
    await w.server.store.putKeys(
      { user: 'bob', device: 'phone' },
      {
        registrationId: 1,
        identityKey: new Uint8Array([1]),
        signedPreKey: { id: 1, key: new Uint8Array([1]), signature: new Uint8Array([1]) },
        lastResortKyber: { id: 2, key: new Uint8Array([2]), signature: new Uint8Array([2]) },
      },
    );
    const answered: number[] = [];
    for (let c = 0; c < 5; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let r = 1; r <= 30; r++) raw.send({ t: 'kget', r, u: ['bob'] });
      await w.advance(50);
      answered.push(raw.frames.filter((f) => f.t === 'kb').length);
    }
    // The first connection used the whole window's allowance; reconnecting gave no more.
    expect(answered[0]).toBeGreaterThan(0);
    expect(answered.slice(1)).toEqual([0, 0, 0, 0]);
  });

  it('the typing limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxTypingPer10s: 5 } }));
    const alice = await w.device('alice');
    await w.server.registerDevice('mallory', 'm1');
    await alice.client.send('mallory', text('hi')); // consent: she wrote to him
    await w.advance(200);
    for (let c = 0; c < 4; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let i = 0; i < 5; i++) raw.send({ t: 'typ', to: 'alice', on: i % 2 === 0 });
      await w.advance(100);
    }
    expect(alice.typing.length).toBe(5);
  });

  it('the frame rate limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxFramesPerSecond: 30 } }));
    const first = await rawAs(w, 'mallory', 'm1');
    for (let i = 0; i < 25; i++) first.send({ t: 'ping' });
    await w.advance(10);
    expect(first.closed).toBeUndefined();
    const second = await rawAs(w, 'mallory', 'm1');
    for (let i = 0; i < 25; i++) second.send({ t: 'ping' });
    await w.advance(10);
    expect(errors(second)).toEqual(['rate_limited']);
    expect(second.closed?.code).toBe(4003);
  });
});
