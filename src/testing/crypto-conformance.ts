/**
 * The {@link CryptoAdapter} conformance suite: two or three devices, each with its own adapter
 * instance and state, talk to each other through a tiny key directory, one case per rule of the
 * contract. Run it against your own adapter with {@link registerCases}.
 */
import assert from 'node:assert/strict';
import { createMemoryClientState, memoryClientStore } from '../client/stores/memory.js';
import { clientCryptoState } from '../crypto/common.js';
import type {
  Ciphertext,
  CryptoAdapter,
  CryptoAddress,
  CryptoStateStore,
  DeviceIdentity,
  IdentityHooks,
  IdentityStatus,
  KeyBundle,
  KeyUpload,
  PublicPreKey,
  SignedPublicKey,
} from '../crypto/types.js';
import type { ConformanceCase } from './conformance.js';

/**
 * The durable storage of one device for the crypto suite: every `open` returns a state store over
 * the SAME data (the previous one is given up: an app restart).
 */
export interface CryptoStorage {
  /** A state store over this device's data (empty at first). */
  open(): Promise<CryptoStateStore>;
  /** Releases the storage at the end of a case. */
  close(): Promise<void>;
}

/** What the crypto suite runs against. */
export interface CryptoAdapterSubject {
  /** Names the adapter in reports. */
  name: string;
  /** A new adapter instance: one per device, and a new one for each restart. */
  create(): CryptoAdapter;
  /**
   * Storage for one new device.
   * @default {@link memoryCryptoStorage}
   */
  storage?(): CryptoStorage;
  /**
   * One-time keys per device in the suite's directory (Kyber key generation is slow).
   * @default 3
   */
  keyCount?: number;
}

/**
 * A device's crypto storage in memory, over a `memoryClientStore` (namespace `crypto`): each
 * `open` is a new store over the same in-memory data.
 */
export function memoryCryptoStorage(): CryptoStorage {
  const disk = createMemoryClientState();
  return {
    open: async () => clientCryptoState(memoryClientStore({ state: disk })),
    close: async () => {},
  };
}

const encoder = new TextEncoder();
const text = (s: string): Uint8Array => encoder.encode(s);

/** A 100-byte plaintext that names itself, so its bytes are easy to spot in a ciphertext. */
const payload = (n: number): Uint8Array => text(`message ${n} `.padEnd(100, '#'));

function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (!a || !b || a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether `hay` contains the first 16 bytes of `needle`. */
function leaks(hay: Uint8Array, needle: Uint8Array): boolean {
  const n = needle.subarray(0, 16);
  outer: for (let i = 0; i + n.byteLength <= hay.byteLength; i++) {
    for (let j = 0; j < n.byteLength; j++) if (hay[i + j] !== n[j]) continue outer;
    return true;
  }
  return false;
}

/** Asserts that `p` rejects with an error of `code` (and `reason`, for a decrypt error). */
async function rejectsWith(p: Promise<unknown>, code: string, reason?: string, what = ''): Promise<void> {
  await assert.rejects(p, (thrown: unknown) => {
    const e = thrown as { code?: string; reason?: string };
    assert.equal(e.code, code, `${what}: error code (${String(e)})`);
    if (reason) assert.equal(e.reason, reason, `${what}: decrypt failure reason (${String(e)})`);
    return true;
  });
}

/** Asserts that `p` resolves to `payload(n)`. */
async function opensTo(p: Promise<Uint8Array>, n: number, what = `message ${n}`): Promise<void> {
  assert.ok(sameBytes(await p, payload(n)), `${what}: decrypts to its plaintext`);
}

/** Asserts that a group decrypt fails for lack of the sender's key. */
const noSenderKey = (p: Promise<unknown>, what: string) =>
  rejectsWith(p, 'decrypt_failed', 'no_sender_key', what);

/** Asserts that a decrypt fails (whatever the reason). */
const fails = (p: Promise<unknown>, what: string) => rejectsWith(p, 'decrypt_failed', undefined, what);

/** Asserts that an operation fails because `hooks.trust` refused the peer's identity. */
const untrusted = (p: Promise<unknown>, what: string) =>
  rejectsWith(p, 'untrusted_identity', undefined, what);

/** Asserts that an encrypt fails for lack of a session. */
const noSession = (p: Promise<unknown>, what: string) => rejectsWith(p, 'no_session', undefined, what);

/** Asserts that a decrypt fails as a replay. */
const replayed = (p: Promise<unknown>, what: string) => rejectsWith(p, 'decrypt_failed', 'duplicate', what);

/** Asserts that `device` stores `owner`'s identity key for `peer`. */
async function knows(
  device: Device,
  peer: CryptoAddress,
  owner: Device,
  what = 'the stored identity',
): Promise<void> {
  assert.ok(sameBytes(await device.crypto.peerIdentity(peer), owner.identity.identityKey), what);
}

/** Flips one byte in the middle of a copy of `b`. */
function corrupt(b: Uint8Array): Uint8Array {
  const c = b.slice();
  const at = Math.floor(c.byteLength / 2);
  c[at] = c[at]! ^ 0x5a;
  return c;
}

/** The suite's key directory: what devices upload, claimed one-time key by one-time key. */
class Directory {
  private readonly keys = new Map<
    string,
    {
      registrationId: number;
      identityKey: Uint8Array;
      signedPreKey?: SignedPublicKey;
      lastResortKyber?: SignedPublicKey;
      preKeys: PublicPreKey[];
      kyberPreKeys: SignedPublicKey[];
    }
  >();

  publish(a: CryptoAddress, up: KeyUpload): void {
    const id = `${a.user}\u0000${a.device}`;
    const old = this.keys.get(id);
    // A new identity (re-install) replaces everything.
    const entry =
      old && sameBytes(old.identityKey, up.identityKey)
        ? old
        : { registrationId: up.registrationId, identityKey: up.identityKey, preKeys: [], kyberPreKeys: [] };
    entry.registrationId = up.registrationId;
    if (up.signedPreKey) entry.signedPreKey = up.signedPreKey;
    if (up.lastResortKyber) entry.lastResortKyber = up.lastResortKyber;
    entry.preKeys.push(...(up.preKeys ?? []));
    entry.kyberPreKeys.push(...(up.kyberPreKeys ?? []));
    this.keys.set(id, entry);
  }

  claim(a: CryptoAddress): KeyBundle {
    const e = this.keys.get(`${a.user}\u0000${a.device}`);
    assert.ok(e?.signedPreKey && e.lastResortKyber, `${a.user}/${a.device} published keys`);
    const preKey = e.preKeys.shift();
    return {
      user: a.user,
      device: a.device,
      registrationId: e.registrationId,
      identityKey: e.identityKey,
      signedPreKey: e.signedPreKey,
      kyberPreKey: e.kyberPreKeys.shift() ?? e.lastResortKyber,
      ...(preKey ? { preKey } : {}),
    };
  }
}

/** Identity hooks that record what they hear and trust by a switchable policy. */
interface RecordingHooks extends IdentityHooks {
  changes: Array<{ peer: CryptoAddress; oldKey: Uint8Array; newKey: Uint8Array }>;
  asked: IdentityStatus[];
  policy: (status: IdentityStatus) => boolean;
}

function recordingHooks(): RecordingHooks {
  const hooks: RecordingHooks = {
    changes: [],
    asked: [],
    policy: () => true,
    changed(peer, oldKey, newKey) {
      hooks.changes.push({ peer: { ...peer }, oldKey, newKey });
    },
    trust(_peer, _key, status) {
      hooks.asked.push(status);
      return hooks.policy(status);
    },
  };
  return hooks;
}

/**
 * `store` with every call delayed by zero to two event-loop turns, in a fixed pattern: a real
 * store (SQLite in a worker, IndexedDB) answers later, which lets concurrent operations
 * interleave. Over an instant store they would run one after another by accident.
 */
function jittery(store: CryptoStateStore): CryptoStateStore {
  let n = 0;
  const later = async (): Promise<void> => {
    for (let hops = n++ % 3; hops > 0; hops--) await new Promise((r) => setImmediate(r));
  };
  return {
    get: async (key) => (await later(), store.get(key)),
    put: async (writes) => (await later(), store.put(writes)),
    list: async (prefix) => (await later(), store.list(prefix)),
  };
}

/** One device in a case: its address, adapter, storage and hooks. */
interface Device {
  address: CryptoAddress;
  crypto: CryptoAdapter;
  identity: DeviceIdentity;
  storage: CryptoStorage;
  hooks: RecordingHooks;
}

/** Builds devices for one case and releases their storage at the end. */
class World {
  readonly directory = new Directory();
  private readonly storages: CryptoStorage[] = [];

  /** Whether the adapter encrypts (its `insecure` flag is false). */
  readonly secure: boolean;

  constructor(private readonly subject: CryptoAdapterSubject) {
    this.secure = !subject.create().insecure;
  }

  /** A new device (or a re-installed one: same address, new storage and identity), keys published. */
  async device(user: string, device = 'd1'): Promise<Device> {
    const storage = (this.subject.storage ?? memoryCryptoStorage)();
    this.storages.push(storage);
    const address = { user, device };
    const hooks = recordingHooks();
    const crypto = this.subject.create();
    const identity = await crypto.open(jittery(await storage.open()), address, hooks);
    this.directory.publish(address, await crypto.initialKeys(this.subject.keyCount ?? 3));
    return { address, crypto, identity, storage, hooks };
  }

  /** The device after an app restart: a new adapter instance over its re-opened storage. */
  async restart(d: Device): Promise<Device> {
    const crypto = this.subject.create();
    const identity = await crypto.open(jittery(await d.storage.open()), d.address, d.hooks);
    return { ...d, crypto, identity };
  }

  /** `from` starts a session with `to` from a directory bundle. */
  async connect(from: Device, to: Device): Promise<IdentityStatus> {
    return from.crypto.processBundle(this.directory.claim(to.address));
  }

  /** Sends `plaintext` from `from` to `to` and checks that it decrypts; returns the ciphertext. */
  async send(from: Device, to: Device, plaintext: Uint8Array): Promise<Ciphertext> {
    const c = await from.crypto.encrypt(to.address, plaintext);
    if (this.secure) assert.ok(!leaks(c.body, plaintext), 'the ciphertext does not contain the plaintext');
    assert.ok(sameBytes(await to.crypto.decrypt(from.address, c), plaintext), 'decrypts to the plaintext');
    return c;
  }

  /** `member` gets `owner`'s sender key for `group`, sent pairwise as a message. */
  async distribute(owner: Device, member: Device, group: string): Promise<void> {
    if (!(await owner.crypto.hasSession(member.address))) await this.connect(owner, member);
    const c = await owner.crypto.encrypt(member.address, await owner.crypto.groupDistribution(group));
    await member.crypto.processGroupDistribution(
      owner.address,
      group,
      await member.crypto.decrypt(owner.address, c),
    );
  }

  /** Bob has written to Alice; then Bob re-installs (bob2: same address, new identity) and has a session to her. */
  async reinstalledSender(): Promise<{ alice: Device; bob: Device; bob2: Device }> {
    const alice = await this.device('alice');
    const bob = await this.device('bob');
    await this.connect(bob, alice);
    await this.send(bob, alice, payload(1));
    const bob2 = await this.device('bob');
    await this.connect(bob2, alice);
    return { alice, bob, bob2 };
  }

  async close(): Promise<void> {
    for (const s of this.storages) await s.close();
  }
}

/**
 * The {@link CryptoAdapter} conformance suite: a list of cases, each named after the rule it
 * proves. Adapters with `insecure: true` skip the checks that only encryption can pass (the
 * ciphertext hides the plaintext, replays and corrupted messages are refused, a received first
 * message teaches the sender's identity).
 *
 * @example
 * ```ts
 * import { libsignalCrypto } from 'postbox/crypto/libsignal';
 * import { cryptoConformance, registerCases } from 'postbox/testing';
 * import { describe, it } from 'vitest';
 *
 * describe('libsignal', () => registerCases(cryptoConformance({ name: 'libsignal', create: () => libsignalCrypto() }), it));
 * ```
 */
export function cryptoConformance(subject: CryptoAdapterSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = (
    name: string,
    body: (w: World) => Promise<void>,
    opts: { secureOnly?: boolean } = {},
  ): void => {
    cases.push({
      name,
      async run() {
        const w = new World(subject);
        try {
          if (opts.secureOnly && !w.secure) return;
          await body(w);
        } finally {
          await w.close();
        }
      },
    });
  };

  test('a session starts from a directory bundle and messages flow both ways', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    assert.equal(await alice.crypto.hasSession(bob.address), false, 'no session before the bundle');
    assert.equal(await w.connect(alice, bob), 'new', 'a first bundle is a new identity');
    assert.equal(await alice.crypto.hasSession(bob.address), true);
    await knows(alice, bob.address, bob);
    const first = await w.send(alice, bob, payload(1));
    assert.equal(await bob.crypto.hasSession(alice.address), true, 'a first message starts the session');
    const reply = await w.send(bob, alice, payload(2));
    const next = await w.send(alice, bob, payload(3));
    if (w.secure) {
      assert.equal(first.kind, 'prekey', 'a first message carries the session');
      assert.equal(reply.kind, 'message', 'the answer needs no prekeys');
      assert.equal(next.kind, 'message', 'an answered session sends plain messages');
    } else {
      assert.deepEqual([first.kind, reply.kind, next.kind], ['plaintext', 'plaintext', 'plaintext']);
    }
  });

  test('until the peer answers, every message can start the session, in any order', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.connect(alice, bob);
    const sent: Ciphertext[] = [];
    for (let i = 0; i < 3; i++) sent.push(await alice.crypto.encrypt(bob.address, payload(i)));
    if (w.secure)
      assert.deepEqual(
        sent.map((c) => c.kind),
        ['prekey', 'prekey', 'prekey'],
      );
    for (const i of [2, 0, 1]) {
      await opensTo(bob.crypto.decrypt(alice.address, sent[i]!), i, `message ${i}`);
    }
    await w.send(bob, alice, payload(9));
  });

  test('encrypt to a device without a session fails with no_session; archiveSession drops it', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await noSession(alice.crypto.encrypt(bob.address, payload(1)), 'before a bundle');
    await w.connect(alice, bob);
    await w.send(alice, bob, payload(1));
    await alice.crypto.archiveSession(bob.address);
    assert.equal(await alice.crypto.hasSession(bob.address), false);
    await noSession(alice.crypto.encrypt(bob.address, payload(2)), 'after archive');
    assert.equal(await w.connect(alice, bob), 'same', 'the identity is still known');
    await w.send(alice, bob, payload(3));
    await w.send(bob, alice, payload(4));
  });

  test('identity, sessions and prekeys survive a re-open', async (w) => {
    let alice = await w.device('alice');
    let bob = await w.device('bob');
    const carol = await w.device('carol');
    await w.connect(alice, bob);
    await w.send(alice, bob, payload(1));
    const pending = await carol.crypto.processBundle(w.directory.claim(bob.address)); // bob restarts before it arrives
    assert.equal(pending, 'new');
    const fromCarol = await carol.crypto.encrypt(bob.address, payload(2));
    const before = bob.identity;
    bob = await w.restart(bob);
    alice = await w.restart(alice);
    assert.ok(sameBytes(bob.identity.identityKey, before.identityKey), 'the same identity key');
    assert.equal(bob.identity.registrationId, before.registrationId, 'the same registration id');
    assert.equal(await alice.crypto.hasSession(bob.address), true);
    await opensTo(bob.crypto.decrypt(carol.address, fromCarol), 2, 'a prekey from before');
    await w.send(bob, alice, payload(3));
    await w.send(alice, bob, payload(4));
    const sn = await alice.crypto.safetyNumber(bob.address);
    alice = await w.restart(alice);
    assert.equal(await alice.crypto.safetyNumber(bob.address), sn, 'the same safety number');
  });

  test('concurrent encrypts to one device are serialized: 50 at once all decrypt', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.connect(alice, bob);
    // While the session is still a prekey one, and once bob has answered.
    for (const round of [0, 1]) {
      const n = 50;
      const sent = await Promise.all(
        Array.from({ length: n }, (_, i) => alice.crypto.encrypt(bob.address, payload(round * 100 + i))),
      );
      if (w.secure) {
        const bodies = new Set(sent.map((c) => Buffer.from(c.body).toString('hex')));
        assert.equal(bodies.size, n, 'no two ciphertexts alike');
      }
      const got = await Promise.all(sent.map((c) => bob.crypto.decrypt(alice.address, c)));
      got.forEach((p, i) => assert.ok(sameBytes(p, payload(round * 100 + i)), `message ${round}/${i}`));
      if (round === 0) await w.send(bob, alice, payload(999));
    }
  });

  test('concurrent group encrypts and decrypts are serialized: 50 at once all decrypt once', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.distribute(alice, bob, 'g');
    const n = 50;
    const sent = await Promise.all(
      Array.from({ length: n }, (_, i) => alice.crypto.groupEncrypt('g', payload(i))),
    );
    const got = await Promise.all(sent.map((c) => bob.crypto.groupDecrypt(alice.address, 'g', c)));
    got.forEach((p, i) => assert.ok(sameBytes(p, payload(i)), `group message ${i}`));
    if (w.secure) {
      const replays = await Promise.allSettled(
        sent.map((c) => bob.crypto.groupDecrypt(alice.address, 'g', c)),
      );
      for (const r of replays) {
        assert.equal(r.status, 'rejected', 'a concurrent replay is refused');
        assert.equal((r as PromiseRejectedResult).reason.reason, 'duplicate');
      }
    }
  });

  test('a failed decrypt changes nothing: a valid message still decrypts after garbage', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.connect(alice, bob);
    const first = await alice.crypto.encrypt(bob.address, payload(1));
    const garbage: Ciphertext[] = w.secure
      ? [
          { kind: 'prekey', body: corrupt(first.body) },
          { kind: 'prekey', body: first.body.subarray(0, 40) },
          { kind: 'message', body: text('not a message at all') },
          { kind: 'plaintext', body: payload(1) },
        ]
      : [{ kind: 'message', body: payload(1) }];
    for (const g of garbage) {
      await fails(bob.crypto.decrypt(alice.address, g), `garbage ${g.kind}`);
    }
    await opensTo(bob.crypto.decrypt(alice.address, first), 1, 'the first message');
    const second = await w.send(bob, alice, payload(2));
    const third = await alice.crypto.encrypt(bob.address, payload(3));
    if (w.secure) {
      await fails(
        alice.crypto.decrypt(bob.address, { kind: 'message', body: corrupt(second.body) }),
        'corrupted',
      );
      await fails(bob.crypto.decrypt(alice.address, { ...third, body: corrupt(third.body) }), 'corrupted');
    }
    await opensTo(bob.crypto.decrypt(alice.address, third), 3, 'a later message');
    // And for groups.
    const carol = await w.device('carol');
    await w.distribute(alice, carol, 'g');
    const m = await alice.crypto.groupEncrypt('g', payload(4));
    const bad = w.secure ? [corrupt(m), m.subarray(0, 10), text('junk')] : [m.subarray(0, 10)];
    for (const b of bad) await fails(carol.crypto.groupDecrypt(alice.address, 'g', b), 'corrupted');
    await opensTo(carol.crypto.groupDecrypt(alice.address, 'g', m), 4, 'the group message');
  });

  test(
    'a replayed message fails with reason duplicate',
    async (w) => {
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      await w.connect(alice, bob);
      const first = await w.send(alice, bob, payload(1));
      await replayed(bob.crypto.decrypt(alice.address, first), 'prekey replay');
      await w.send(bob, alice, payload(2));
      const later = await w.send(alice, bob, payload(3));
      await replayed(bob.crypto.decrypt(alice.address, later), 'message replay');
      await w.distribute(alice, bob, 'g');
      const g = await alice.crypto.groupEncrypt('g', payload(4));
      await bob.crypto.groupDecrypt(alice.address, 'g', g);
      await replayed(bob.crypto.groupDecrypt(alice.address, 'g', g), 'group replay');
      await w.send(alice, bob, payload(5));
    },
    { secureOnly: true },
  );

  test('group: one encryption, every member with the sender key decrypts it', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    const carol = await w.device('carol');
    await w.distribute(alice, bob, 'g');
    await w.distribute(alice, carol, 'g');
    const m = await alice.crypto.groupEncrypt('g', payload(1));
    if (w.secure) assert.ok(!leaks(m, payload(1)), 'the group ciphertext does not contain the plaintext');
    for (const member of [bob, carol]) {
      await opensTo(member.crypto.groupDecrypt(alice.address, 'g', m), 1, member.address.user);
    }
    // A member's own key, distributed the other way.
    await w.distribute(bob, alice, 'g');
    const fromBob = await bob.crypto.groupEncrypt('g', payload(2));
    assert.ok(sameBytes(await alice.crypto.groupDecrypt(bob.address, 'g', fromBob), payload(2)));
  });

  test('a group message whose sender key is missing fails with no_sender_key', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    const carol = await w.device('carol');
    await w.distribute(alice, bob, 'g');
    const m = await alice.crypto.groupEncrypt('g', payload(1));
    await noSenderKey(carol.crypto.groupDecrypt(alice.address, 'g', m), 'never got it');
    await noSenderKey(bob.crypto.groupDecrypt(alice.address, 'other', m), 'other group');
    await noSenderKey(bob.crypto.groupDecrypt(carol.address, 'g', m), 'other sender');
    await opensTo(bob.crypto.groupDecrypt(alice.address, 'g', m), 1, 'the member still decrypts');
    await w.distribute(alice, carol, 'g');
    const later = await alice.crypto.groupEncrypt('g', payload(2));
    await opensTo(carol.crypto.groupDecrypt(alice.address, 'g', later), 2, 'once it has the key');
  });

  test('after rotateGroupKey, a member without the new distribution cannot decrypt new messages', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    const carol = await w.device('carol');
    await w.distribute(alice, bob, 'g');
    await w.distribute(alice, carol, 'g');
    const before = await alice.crypto.groupDistribution('g');
    await alice.crypto.rotateGroupKey('g'); // carol left
    assert.ok(!sameBytes(await alice.crypto.groupDistribution('g'), before), 'a new distribution');
    await w.distribute(alice, bob, 'g');
    const m = await alice.crypto.groupEncrypt('g', payload(1));
    await opensTo(bob.crypto.groupDecrypt(alice.address, 'g', m), 1, 'bob has the new key');
    await noSenderKey(carol.crypto.groupDecrypt(alice.address, 'g', m), 'carol');
  });

  test('sender keys survive a re-open', async (w) => {
    let alice = await w.device('alice');
    let bob = await w.device('bob');
    await w.distribute(alice, bob, 'g');
    const m1 = await alice.crypto.groupEncrypt('g', payload(1));
    alice = await w.restart(alice);
    bob = await w.restart(bob);
    await opensTo(bob.crypto.groupDecrypt(alice.address, 'g', m1), 1, 'sent before');
    const m2 = await alice.crypto.groupEncrypt('g', payload(2));
    await opensTo(bob.crypto.groupDecrypt(alice.address, 'g', m2), 2, 'sent after');
    if (w.secure) {
      await replayed(bob.crypto.groupDecrypt(alice.address, 'g', m1), 'replay');
    }
  });

  test('a changed identity (re-install) is reported once through hooks.changed, then used', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.connect(alice, bob);
    await w.send(alice, bob, payload(1));
    await w.send(bob, alice, payload(2));
    const bob2 = await w.device('bob'); // same address, new storage and identity
    assert.ok(!sameBytes(bob2.identity.identityKey, bob.identity.identityKey), 'a new identity key');
    const sn = await alice.crypto.safetyNumber(bob.address);
    alice.hooks.asked.length = 0;
    assert.equal(await w.connect(alice, bob2), 'changed');
    assert.equal(alice.hooks.changes.length, 1, 'reported once');
    const change = alice.hooks.changes[0]!;
    assert.deepEqual(change.peer, bob.address);
    assert.ok(sameBytes(change.oldKey, bob.identity.identityKey), 'the old key');
    assert.ok(sameBytes(change.newKey, bob2.identity.identityKey), 'the new key');
    assert.ok(alice.hooks.asked.includes('changed'), 'trust was asked about the changed key');
    await knows(alice, bob.address, bob2, 'now stored');
    assert.notEqual(await alice.crypto.safetyNumber(bob.address), sn, 'a new safety number');
    await w.send(alice, bob2, payload(3));
    await w.send(bob2, alice, payload(4));
    assert.equal(alice.hooks.changes.length, 1, 'still once');
    assert.equal(await w.connect(alice, bob2), 'same');
  });

  test(
    'a first message from a re-installed device reports the changed identity to the recipient',
    async (w) => {
      const { alice, bob, bob2 } = await w.reinstalledSender();
      assert.equal(alice.hooks.changes.length, 0, 'nothing yet');
      await w.send(bob2, alice, payload(2));
      assert.equal(alice.hooks.changes.length, 1, 'reported on decrypt');
      assert.ok(sameBytes(alice.hooks.changes[0]!.newKey, bob2.identity.identityKey));
      await knows(alice, bob.address, bob2);
    },
    { secureOnly: true },
  );

  test(
    'a forged first message from a new identity leaves the stored identity and session as they were',
    async (w) => {
      const { alice, bob, bob2 } = await w.reinstalledSender(); // bob2: anyone with bob's address and a key of their own
      const c = await bob2.crypto.encrypt(alice.address, payload(2));
      for (const at of [c.body.byteLength - 1, c.body.byteLength - 9]) {
        const forged = c.body.slice();
        forged[at] = forged[at]! ^ 1; // the MAC, and the last ciphertext byte before it
        await fails(alice.crypto.decrypt(bob.address, { kind: 'prekey', body: forged }), 'corrupted');
      }
      await knows(alice, bob.address, bob, 'old key kept');
      assert.deepEqual(alice.hooks.changes, [], 'no identity change reported for a forgery');
      await w.send(bob, alice, payload(3)); // the old session still works
    },
    { secureOnly: true },
  );

  test('an identity hooks.trust refuses fails with UntrustedIdentityError and changes nothing', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.connect(alice, bob);
    await w.send(alice, bob, payload(1));
    const bob2 = await w.device('bob');
    alice.hooks.policy = (status) => status !== 'changed'; // block until verified
    await untrusted(w.connect(alice, bob2), 'bundle of a changed identity');
    await knows(alice, bob.address, bob, 'old key kept');
    await w.send(alice, bob, payload(2)); // the old session is untouched
    alice.hooks.policy = () => false; // nothing is trusted any more
    await untrusted(alice.crypto.encrypt(bob.address, payload(3)), 'encrypt');
    if (w.secure) {
      const carol = await w.device('carol');
      await w.connect(carol, alice);
      const c = await carol.crypto.encrypt(alice.address, payload(4));
      await untrusted(alice.crypto.decrypt(carol.address, c), 'decrypt');
      assert.equal(await alice.crypto.hasSession(carol.address), false, 'no session from a refused message');
      alice.hooks.policy = () => true;
      await opensTo(alice.crypto.decrypt(carol.address, c), 4, 'decrypts once trusted');
    }
  });

  test('safety numbers are 60 digits and the same on both sides', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    assert.equal(await alice.crypto.safetyNumber(bob.address), undefined, 'unknown before any key');
    await w.connect(alice, bob);
    await w.send(alice, bob, payload(1));
    if (!w.secure) await w.connect(bob, alice); // the plaintext adapter learns identities from bundles only
    const a = await alice.crypto.safetyNumber(bob.address);
    const b = await bob.crypto.safetyNumber(alice.address);
    assert.match(a ?? '', /^\d{60}$/);
    assert.equal(a, b);
    const carol = await w.device('carol');
    await w.connect(alice, carol);
    assert.notEqual(await alice.crypto.safetyNumber(carol.address), a, 'another peer, another number');
  });

  test('a bundle with a bad signature is refused, and no identity hook hears of it', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    const good = w.directory.claim(bob.address);
    const badSigned = {
      ...good,
      signedPreKey: { ...good.signedPreKey, signature: corrupt(good.signedPreKey.signature) },
    };
    const badKyber = {
      ...good,
      kyberPreKey: { ...good.kyberPreKey, signature: corrupt(good.kyberPreKey.signature) },
    };
    for (const bad of [badSigned, badKyber]) await assert.rejects(alice.crypto.processBundle(bad));
    assert.equal(await alice.crypto.hasSession(bob.address), false);
    assert.equal(await alice.crypto.peerIdentity(bob.address), undefined);
    assert.deepEqual(alice.hooks.asked, [], 'trust not asked');
    assert.equal(await alice.crypto.processBundle(good), 'new');
    await w.send(alice, bob, payload(1));
  });

  test('key uploads carry fresh ids; sessions from the previous signed prekey survive one rotation', async (w) => {
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    const old = w.directory.claim(bob.address);
    const more = await bob.crypto.moreKeys(2);
    assert.ok(sameBytes(more.identityKey, bob.identity.identityKey));
    assert.equal(more.registrationId, bob.identity.registrationId);
    assert.equal(more.preKeys?.length, 2);
    assert.equal(more.kyberPreKeys?.length, 2);
    assert.equal(more.signedPreKey, undefined, 'moreKeys does not rotate');
    const rotated = await bob.crypto.rotateKeys();
    assert.ok(rotated.signedPreKey && rotated.lastResortKyber, 'a rotation carries both');
    assert.notEqual(rotated.signedPreKey.id, old.signedPreKey.id, 'a new signed prekey id');
    const kyberIds = [old.kyberPreKey.id, ...more.kyberPreKeys!.map((k) => k.id), rotated.lastResortKyber.id];
    assert.equal(new Set(kyberIds).size, kyberIds.length, 'Kyber ids never repeat');
    assert.ok(!more.preKeys!.some((k) => k.id === old.preKey?.id), 'EC prekey ids never repeat');
    w.directory.publish(bob.address, more);
    w.directory.publish(bob.address, rotated);
    await alice.crypto.processBundle(old); // claimed before the rotation
    await w.send(alice, bob, payload(1));
    await w.send(bob, alice, payload(2));
  });

  test('when one-time prekeys run out, the last-resort Kyber key still starts sessions', async (w) => {
    const bob = await w.device('bob');
    const senders = await Promise.all(['alice', 'carol', 'dave', 'erin', 'fred'].map((u) => w.device(u)));
    for (const s of senders) {
      await w.connect(s, bob); // keyCount one-time keys, then bundles without an EC prekey
      await w.send(s, bob, payload(1));
      await w.send(bob, s, payload(2));
    }
  });

  return cases;
}
