// End-to-end encryption through the engines: the server is a blind courier, sessions come from
// the key directory, device lists are corrected by the server's answers, sender keys carry group
// messages, and every failure to decrypt is recovered by a resend rather than shown as a hole.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { insecurePlaintextCrypto } from '../src/crypto/plaintext.js';
import type { CryptoAdapter } from '../src/crypto/types.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { createMemoryClientState, memoryClientStore } from '../src/client/stores/memory.js';
import { makeWorld, settled as settle, until, type TestDevice, type World } from './helpers.js';
import type { ClientOptions } from '../src/client/index.js';

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

let world: World | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await world?.close();
  world = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const texts = (d: TestDevice) => d.messages.map((m) => str(m.body));

const ADAPTERS: Array<[string, () => CryptoAdapter]> = [
  ['libsignal', () => libsignalCrypto()],
  ['plaintext (tests only)', () => insecurePlaintextCrypto()],
];

describe.each(ADAPTERS)('end-to-end encryption with the %s adapter', (_name, adapter) => {
  it('1:1 messages reach every device of the recipient and the sender’s other devices, in order, once', async () => {
    world = await makeWorld({ crypto: adapter });
    const alice = await world.device('alice', 'phone');
    const aliceLaptop = await world.device('alice', 'laptop');
    const bob = await world.device('bob', 'phone');
    const bobTablet = await world.device('bob', 'tablet');
    await world.advance(500);
    const ids = await Promise.all(['one', 'two', 'three'].map((t) => alice.client.send('bob', text(t))));
    await until(world, () => ids.every((id) => alice.statusOf(id) === 'delivered'));
    await until(
      world,
      () => texts(bob).length === 3 && texts(bobTablet).length === 3 && texts(aliceLaptop).length === 3,
    );
    expect(texts(bob)).toEqual(['one', 'two', 'three']);
    expect(texts(bobTablet)).toEqual(['one', 'two', 'three']);
    expect(aliceLaptop.messages.every((m) => m.self && m.conv === 'bob')).toBe(true);
    await bob.client.send('alice', text('back'));
    await until(world, () => texts(alice).includes('back') && texts(aliceLaptop).includes('back'));
  });

  it('many concurrent sends to one device all decrypt, in order', async () => {
    world = await makeWorld({ crypto: adapter });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(500);
    const sent = Array.from({ length: 50 }, (_, i) => `m${i}`);
    for (const t of sent) await alice.client.send('bob', text(t));
    await until(world, () => bob.messages.length === 50);
    expect(texts(bob)).toEqual(sent);
    // And both ways at once.
    const back = Array.from({ length: 30 }, (_, i) => `b${i}`);
    for (let i = 0; i < 30; i++) {
      await bob.client.send('alice', text(back[i]!));
      await alice.client.send('bob', text(`x${i}`));
    }
    await until(world, () => alice.messages.length === 30 && bob.messages.length === 80);
    expect(texts(alice)).toEqual(back);
  });

  it('a group message is encrypted once with sender keys and every member device decrypts it', async () => {
    world = await makeWorld({ crypto: adapter });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const bobTablet = await world.device('bob', 'tablet');
    const carol = await world.device('carol');
    await world.advance(500);
    const g = await settle(world!, alice.client.createGroup('trip', ['bob', 'carol']));
    await until(world, () => carol.client.group(g)?.members.length === 3);
    const sent = Array.from({ length: 20 }, (_, i) => `g${i}`);
    for (const t of sent) await alice.client.sendToGroup(g, text(t));
    await until(world, () => [bob, bobTablet, carol].every((d) => d.messages.length === 20));
    for (const d of [bob, bobTablet, carol]) expect(texts(d)).toEqual(sent);
    // Members answer in the group too.
    await carol.client.sendToGroup(g, text('from carol'));
    await until(world, () => texts(alice).includes('from carol') && texts(bobTablet).includes('from carol'));
  });

  it('a member added later gets the sender key before it needs it; a removed one gets nothing after', async () => {
    world = await makeWorld({ crypto: adapter });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const dave = await world.device('dave');
    await world.advance(500);
    const g = await settle(world!, alice.client.createGroup('club', ['bob']));
    await alice.client.sendToGroup(g, text('before'));
    await until(world, () => texts(bob).includes('before'));
    await settle(world!, alice.client.addMembers(g, ['dave']));
    await until(world, () => alice.client.group(g)?.members.length === 3);
    await alice.client.sendToGroup(g, text('welcome dave'));
    await until(world, () => texts(dave).includes('welcome dave') && texts(bob).includes('welcome dave'));
    await settle(world!, alice.client.removeMembers(g, ['bob']));
    await until(world, () => alice.client.group(g)?.members.length === 2);
    await alice.client.sendToGroup(g, text('after bob'));
    await until(world, () => texts(dave).includes('after bob'));
    await world.advance(500);
    expect(texts(bob)).not.toContain('after bob');
    expect(texts(dave)).not.toContain('before');
  });

  it('safety numbers are the same on both sides', async () => {
    world = await makeWorld({ crypto: adapter });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(500);
    await alice.client.send('bob', text('hi'));
    await until(world, () => bob.messages.length === 1);
    await bob.client.send('alice', text('hello'));
    await until(world, () => alice.messages.length === 1);
    const a = await alice.client.safetyNumber('bob', 'phone');
    const b = await bob.client.safetyNumber('alice', 'phone');
    expect(a).toMatch(/^\d{60}$/);
    expect(a).toBe(b);
  });
});

describe('device lists follow the directory', () => {
  it('a device linked after the sender learned the list gets the next message (missing), an unlinked one is dropped (extra)', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const tablet = await world.device('bob', 'tablet');
    await world.advance(500);
    await alice.client.send('bob', text('one'));
    await until(world, () => bob.messages.length === 1 && tablet.messages.length === 1);
    // Bob links a laptop: Alice's list lacks it, the server says which device is missing.
    const laptop = await world.device('bob', 'laptop');
    await world.advance(500);
    const two = await alice.client.send('bob', text('two'));
    await until(world, () => texts(laptop).includes('two') && texts(bob).includes('two'));
    // Bob unlinks the tablet: Alice's list has a device too many.
    await settle(world, bob.client.unlinkDevice('tablet'));
    await world.advance(500);
    const three = await alice.client.send('bob', text('three'));
    await until(world, () => texts(laptop).includes('three') && texts(bob).includes('three'));
    await until(world, () => alice.statusOf(two) === 'delivered' && alice.statusOf(three) === 'delivered');
    expect(texts(tablet)).toEqual(['one', 'two']);
    expect(texts(laptop)).toEqual(['two', 'three']);
  });
});

describe('key directory upkeep', () => {
  it('the signed prekey is rotated once it is older than signedPreKeyMaxAgeMs, and sessions keep working', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const bob = await world.device('bob', 'phone', { client: { signedPreKeyMaxAgeMs: 60_000 } });
    const alice = await world.device('alice');
    await world.advance(500);
    const spk = async () => (await world!.server.store.claimKeys('bob', 'phone'))[0]!.signedPreKey.id;
    const first = await spk();
    await alice.client.send('bob', text('before'));
    await until(world, () => bob.messages.length === 1);
    await world.advance(61_000);
    await bob.restart(); // the check runs on connect
    await world.advance(500);
    expect(await spk()).not.toBe(first);
    await alice.client.send('bob', text('after'));
    await until(world, () => texts(bob).includes('after'));
  });
});

describe('recovery: the app sees a message late, never a hole', () => {
  it('a re-installed device (new identity, same device id) still gets the message: stale_devices, refresh, retry', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const { alice, bob } = await reinstalledPeer(world, {});
    const id = await alice.client.send('bob', text('second'));
    await until(world, () => texts(bob).includes('second'));
    await until(world, () => alice.statusOf(id) === 'delivered');
    expect(alice.identityChanges).toEqual([{ user: 'bob', device: 'phone' }]);
  });

  it('a recipient whose session state was wiped asks for the message again and gets it', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    // Bob's app comes back having lost every session (and nothing else).
    const { alice, restarted } = await lostSessions(world, {});
    await alice.client.send('bob', text('two'));
    await alice.client.send('bob', text('three'));
    await until(world, () => texts(restarted).includes('two') && texts(restarted).includes('three'));
    expect(texts(restarted)).toEqual(['two', 'three']);
    expect(restarted.undecryptable).toEqual([]);
  });

  it('a message the sender can no longer send again becomes an undecryptable event, not silence', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const { alice, restarted } = await lostSessions(world, { resendWindowMs: 0 });
    const id = await alice.client.send('bob', text('lost'));
    await until(world, () => restarted.undecryptable.length === 1);
    expect(restarted.undecryptable[0]).toMatchObject({ from: 'alice', fromDevice: 'phone', id });
  });

  it('a message that could not be decrypted and never came again leaves a gap with reason undecryptable', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const { alice, restarted } = await lostSessions(world, { resendWindowMs: 0 });
    await alice.client.send('bob', text('lost'));
    await until(world, () => restarted.undecryptable.length === 1);
    await alice.client.send('bob', text('next')); // held behind the hole
    await until(world, () => texts(restarted).includes('next'), 20_000);
    expect(restarted.gaps).toEqual([
      expect.objectContaining({ conv: 'alice', from: 'alice', reason: 'undecryptable' }),
    ]);
  });

  it('prekey exhaustion: sessions still start (last-resort Kyber key, no one-time key) and the device tops its supply up', async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto(), server: { keyLowWater: 2 } });
    const bob = await world.device('bob', 'phone', { client: { preKeySupply: 3 } });
    await world.advance(500);
    const senders: TestDevice[] = [];
    for (let i = 0; i < 6; i++) senders.push(await world.device(`s${i}`));
    await world.advance(500);
    for (const s of senders) await s.client.send('bob', text(`from ${s.user}`));
    await until(world, () => bob.messages.length === 6);
    expect(new Set(texts(bob)).size).toBe(6);
    const left = await world.server.store.keyCount({ user: 'bob', device: 'phone' });
    expect(left?.preKeys).toBeGreaterThan(0);
  });
});

describe('the server is a blind courier', () => {
  it('nothing the server stored or received on the wire contains the plaintext', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'postbox-e2ee-'));
    dirs.push(dir);
    const path = join(dir, 'server.sqlite');
    world = await makeWorld({
      crypto: () => libsignalCrypto(),
      openStore: () => sqliteServerStore({ path }),
    });
    const wire: Uint8Array[] = [];
    world.net.intercept((frame) => {
      wire.push(frame.slice());
      return 'pass';
    });
    const alice = await world.device('alice');
    const aliceLaptop = await world.device('alice', 'laptop');
    const bob = await world.device('bob');
    const carol = await world.device('carol');
    await world.advance(500);
    const secrets = Array.from({ length: 10 }, (_, i) => `TOP-SECRET-PLAINTEXT-${i}-${'x'.repeat(20)}`);
    for (const s of secrets.slice(0, 5)) await alice.client.send('bob', text(s));
    const g = await settle(world!, alice.client.createGroup('secret club', ['bob', 'carol']));
    for (const s of secrets.slice(5)) await alice.client.sendToGroup(g, text(s));
    await until(
      world,
      () => bob.messages.length === 10 && carol.messages.length === 5 && aliceLaptop.messages.length === 10,
    );
    await world.close();
    world = undefined;
    const haystacks = [...wire];
    for (const f of readdirSync(dir)) haystacks.push(readFileSync(join(dir, f)));
    expect(wire.length).toBeGreaterThan(20);
    for (const s of secrets) {
      const needle = Buffer.from(s.slice(0, 24));
      for (const h of haystacks) expect(Buffer.from(h).indexOf(needle)).toBe(-1);
    }
  });
});

/** Alice and Bob talk both ways, then Bob's app restarts with every session lost. */
async function lostSessions(w: World, aliceOptions: Partial<ClientOptions>) {
  const alice = await w.device('alice', 'phone', { client: aliceOptions });
  const bob = await w.device('bob');
  await w.advance(500);
  await alice.client.send('bob', text('one'));
  await until(w, () => bob.messages.length === 1);
  await bob.client.send('alice', text('ack'));
  await until(w, () => alice.messages.length === 1);
  return { alice, restarted: await wipeSessions(w, bob) };
}

/** Closes a device's app, deletes its crypto sessions (nothing else) and starts it again. */
async function wipeSessions(w: World, d: TestDevice): Promise<TestDevice> {
  await d.client.close();
  const store = memoryClientStore({ state: d.state });
  const sessions = (await store.listState('crypto')).filter((e) => e.key.startsWith('sess/'));
  expect(sessions.length).toBeGreaterThan(0);
  await store.putState(sessions.map((e) => ({ ns: 'crypto', key: e.key, value: undefined })));
  const again = await w.device(d.user, d.device, { state: d.state });
  await w.advance(500);
  return again;
}

/**
 * Alice and Bob exchange a message, then Bob re-installs his app (a fresh client state: a new
 * identity and registration id under the same device id).
 */
async function reinstalledPeer(w: World, aliceOptions: Partial<ClientOptions>) {
  const alice = await w.device('alice', 'phone', { client: aliceOptions });
  const first = await w.device('bob');
  await w.advance(500);
  await alice.client.send('bob', text('first'));
  await until(w, () => first.messages.length === 1);
  await first.client.close();
  const bob = await w.device('bob', 'phone', { state: createMemoryClientState() });
  await w.advance(500);
  return { alice, bob };
}

describe('identity changes', () => {
  it("under identityPolicy 'block' a message to a changed identity waits until it is verified, then goes", async () => {
    world = await makeWorld({ crypto: () => libsignalCrypto() });
    const { alice, bob } = await reinstalledPeer(world, { identityPolicy: 'block' });
    const id = await alice.client.send('bob', text('second'));
    await until(world, () => alice.identityChanges.length === 1);
    await world.advance(3000);
    expect(texts(bob)).toEqual([]);
    expect(alice.statusOf(id)).toBe('pending');
    expect(await settle(world!, alice.client.verifyIdentity('bob', 'phone'))).toBe(true);
    await until(world, () => texts(bob).includes('second'));
  });
});

describe('bad key-directory input gets a typed error and harms no one', () => {
  it('a first key upload without a signed prekey, a key-claim flood, envelopes on a group send, an oversized envelope', async () => {
    world = await makeWorld({ crypto: () => insecurePlaintextCrypto(), server: { maxKeyClaimsPer10s: 10 } });
    const bob = await world.device('bob');
    await world.advance(500);
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'keys', r: 1, rid: 7, ik: new Uint8Array(33), pk: [[1, new Uint8Array(33)]] });
    for (let i = 0; i < 12; i++) raw.send({ t: 'kget', r: 10 + i, u: ['bob'] });
    raw.send({
      t: 'send',
      r: 30,
      id: 'g1',
      to: '#grp',
      seq: 1,
      b: new Uint8Array(0),
      g: true,
      e: [['bob', 'phone', 1, new Uint8Array(3)]],
    });
    raw.send({
      t: 'send',
      r: 31,
      id: 'big',
      to: 'bob',
      seq: 1,
      b: new Uint8Array(0),
      e: [['bob', 'phone', 1, new Uint8Array(64 * 1024 + 5000)]],
    });
    await world.advance(200);
    const errs = raw.frames.filter((f) => f.t === 'err') as Array<{ r?: number; c: string }>;
    expect(errs.find((e) => e.r === 1)?.c).toBe('invalid_frame');
    expect(errs.filter((e) => e.c === 'rate_limited').length).toBeGreaterThan(0);
    expect(errs.find((e) => e.r === 30)?.c).toBe('invalid_frame');
    expect(errs.find((e) => e.r === 31)?.c).toBe('too_large');
    expect(raw.closed).toBeUndefined();
    // Bob's keys were claimed at most ten times and he still receives.
    const alice = await world.device('alice');
    await world.advance(500);
    await alice.client.send('bob', text('still fine'));
    await until(world, () => texts(bob).includes('still fine'));
  });
});
