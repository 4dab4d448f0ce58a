// Key claims cost the server one store call per `kget` frame, however many users it names, and
// all claimers of a node together stop at a node-wide bound: many accounts, each within its own
// budget, cannot make the key directory do more (docs/security.md, the `slow-readers` attack).
import { afterEach, describe, expect, it } from 'vitest';
import { ERROR_CODES, type ServerFrame } from '../src/protocol/index.js';
import type { ServerStore } from '../src/server/index.js';
import { createMemoryServerState, memoryServerStore } from '../src/server/stores/memory.js';
import { makeWorld, type RawConnection, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const keys = {
  registrationId: 1,
  identityKey: new Uint8Array([1]),
  signedPreKey: { id: 1, key: new Uint8Array([1]), signature: new Uint8Array([1]) },
  lastResortKyber: { id: 2, key: new Uint8Array([2]), signature: new Uint8Array([2]) },
};

/** Registers `users` (device `d1` each) with keys in the directory. */
async function withKeys(w: World, users: string[]): Promise<void> {
  for (const u of users) {
    await w.server.registerDevice(u, 'd1');
    await w.server.store.putKeys({ user: u, device: 'd1' }, keys);
  }
}

async function rawAs(w: World, user: string): Promise<RawConnection> {
  const raw = await w.raw(`${user}/d1`);
  await raw.hello(user, 'd1');
  return raw;
}

/** The answers a raw connection got to its `kget` frames: the bundle count, or the error code. */
const answers = (raw: RawConnection): Array<number | string> =>
  raw.frames.flatMap((f: ServerFrame): Array<number | string> => {
    if (f.t === 'kb') return [f.b.length];
    if (f.t === 'err') return [f.c];
    return [];
  });

describe('key claims', () => {
  it('a kget naming many users is claimed with one store call and answers every named user', async () => {
    let calls = 0;
    const counting = (): ServerStore => {
      const inner = memoryServerStore({ state: createMemoryServerState() });
      return {
        ...inner,
        claimKeys(users, device, options) {
          calls++;
          return inner.claimKeys(users, device, options);
        },
      };
    };
    const w = (world = await makeWorld({ openStore: counting }));
    const users = Array.from({ length: 40 }, (_, i) => `u${i}`);
    await withKeys(w, users);
    const raw = await rawAs(w, 'mallory');
    raw.send({ t: 'kget', r: 1, u: users });
    await w.advance(50);
    expect(answers(raw)).toEqual([40]);
    expect(calls).toBe(1);
  });

  it('claims of many accounts together stop at the node-wide bound with a retryable rate_limited, and are answered again once it refills', async () => {
    // 10 users named a second, a burst of 20.
    const w = (world = await makeWorld({ server: { maxNodeKeyClaimsPerSecond: 10 } }));
    const targets = ['t0', 't1', 't2', 't3'];
    await withKeys(w, targets);
    const claimers = await Promise.all(['c0', 'c1', 'c2', 'c3', 'c4', 'c5'].map((c) => rawAs(w, c)));
    // Six accounts, each far within its own budget, ask for 4 users each: five fit.
    for (const c of claimers) c.send({ t: 'kget', r: 1, u: targets });
    await w.advance(50);
    const got = claimers.map((c) => answers(c));
    expect(got.filter((a) => a[0] === 4)).toHaveLength(5);
    const refusedOne = claimers[got.findIndex((a) => a[0] === 'rate_limited')]!;
    expect(answers(refusedOne)).toEqual(['rate_limited']);
    expect(ERROR_CODES.rate_limited.retryable).toBe(true);
    expect(refusedOne.frames.find((f) => f.t === 'err')).toMatchObject({ r: 1 });
    // A second later the bucket holds 10 again: the refused claimer retries and is answered.
    await w.advance(1000);
    refusedOne.send({ t: 'kget', r: 2, u: targets });
    await w.advance(50);
    expect(answers(refusedOne)).toEqual(['rate_limited', 4]);
  });

  it('a claimer over its own budget takes nothing from the node-wide bound', async () => {
    // Each one-user claim counts 2 against its claimer (the user named, then the bundle): 4 a 10 s.
    const w = (world = await makeWorld({ server: { maxKeyClaimsPer10s: 8, maxNodeKeyClaimsPerSecond: 10 } }));
    await withKeys(w, ['t0']);
    const mallory = await rawAs(w, 'mallory');
    for (let r = 1; r <= 30; r++) mallory.send({ t: 'kget', r, u: ['t0'] });
    await w.advance(50);
    const got = answers(mallory);
    expect(got.filter((a) => a === 1)).toHaveLength(4);
    expect(got.filter((a) => a === 'rate_limited')).toHaveLength(26);
    // The node's burst of 20 less mallory's 4: sixteen claims of other accounts are all answered.
    const others = await Promise.all(Array.from({ length: 8 }, (_, i) => rawAs(w, `o${i}`)));
    for (const o of others) for (let r = 1; r <= 2; r++) o.send({ t: 'kget', r, u: ['t0'] });
    await w.advance(50);
    expect(others.map((o) => answers(o))).toEqual(others.map(() => [1, 1]));
  });
  it('a claim that takes one-time keys tells their online device to upload more, and one of last-resort bundles tells no one again', async () => {
    const w = (world = await makeWorld());
    await withKeys(w, ['bob']);
    await w.server.store.putKeys(
      { user: 'bob', device: 'd1' },
      { ...keys, preKeys: [{ id: 7, key: new Uint8Array([7]) }] },
    );
    const bob = await rawAs(w, 'bob');
    await w.advance(50);
    const klows = () => bob.frames.filter((f) => f.t === 'klow').length;
    const told = klows(); // on connect, below the low-water mark
    const mallory = await rawAs(w, 'mallory');
    mallory.send({ t: 'kget', r: 1, u: ['bob'] });
    await w.advance(50);
    expect(klows()).toBe(told + 1);
    for (let r = 2; r <= 6; r++) mallory.send({ t: 'kget', r, u: ['bob'] });
    await w.advance(50);
    expect(answers(mallory)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(klows()).toBe(told + 1);
  });
});
