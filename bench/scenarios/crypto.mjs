// Encrypt + decrypt rate on one thread (solo): the postbox libsignal adapter (postbox/crypto/libsignal,
// state in a memory client store) beside raw @signalapp/libsignal-client calls with minimal
// in-memory stores, in the same process. An established session (both sides have sent), a 100-byte
// plaintext, one message at a time: encrypt at alice, decrypt at bob. Three subjects take turns
// (an order that rotates with the round), so a burst of other load hits all alike. Target: adapter
// ≥ 0.8 × raw. Also `node bench/tools/crypto-rate.mjs` for the same outside the runner.
import * as signal from '@signalapp/libsignal-client';
import { performance } from 'node:perf_hooks';
import { memoryClientStore } from 'postbox/client/memory';
import { clientCryptoState } from 'postbox/crypto';
import { libsignalCrypto } from 'postbox/crypto/libsignal';

const plaintext = new Uint8Array(100).fill(0x61);

// ---------------------------------------------------------------------------------------- raw

/**
 * One raw libsignal device with the smallest stores that work. `serialized`: records kept as bytes
 * (as libsignal's own test stores and any persistent store do); otherwise the record objects
 * themselves (the fastest possible, nothing a real app can do across restarts).
 */
function rawDevice(name, serialized) {
  const pair = signal.IdentityKeyPair.generate();
  const registrationId = 1 + Math.floor(Math.random() * 16380);
  const address = signal.ProtocolAddress.new(name, 1);
  const sessions = new Map();
  const identities = new Map();
  const prekeys = new Map();
  const signed = new Map();
  const kyber = new Map();
  const store = {
    async saveSession(a, r) {
      sessions.set(a.toString(), serialized ? r.serialize() : r);
    },
    async getSession(a) {
      const r = sessions.get(a.toString());
      if (!r) return null;
      return serialized ? signal.SessionRecord.deserialize(r) : r;
    },
    async getExistingSessions(as) {
      return Promise.all(as.map((a) => store.getSession(a)));
    },
    async getIdentityKey() {
      return pair.privateKey;
    },
    async getIdentityKeyPair() {
      return pair;
    },
    async getLocalRegistrationId() {
      return registrationId;
    },
    async saveIdentity(a, key) {
      const old = identities.get(a.toString());
      identities.set(a.toString(), key);
      return old && !old.equals(key)
        ? signal.IdentityChange.ReplacedExisting
        : signal.IdentityChange.NewOrUnchanged;
    },
    async isTrustedIdentity(a, key) {
      const old = identities.get(a.toString());
      return !old || old.equals(key);
    },
    async getIdentity(a) {
      return identities.get(a.toString()) ?? null;
    },
    async savePreKey(id, r) {
      prekeys.set(id, r);
    },
    async getPreKey(id) {
      return prekeys.get(id);
    },
    async removePreKey(id) {
      prekeys.delete(id);
    },
    async saveSignedPreKey(id, r) {
      signed.set(id, r);
    },
    async getSignedPreKey(id) {
      return signed.get(id);
    },
    async saveKyberPreKey(id, r) {
      kyber.set(id, r);
    },
    async getKyberPreKey(id) {
      return kyber.get(id);
    },
    async markKyberPreKeyUsed(id) {
      kyber.delete(id);
    },
  };
  function bundle() {
    const pre = signal.PrivateKey.generate();
    const spk = signal.PrivateKey.generate();
    const spkSig = pair.privateKey.sign(spk.getPublicKey().serialize());
    const kem = signal.KEMKeyPair.generate();
    const kemSig = pair.privateKey.sign(kem.getPublicKey().serialize());
    prekeys.set(1, signal.PreKeyRecord.new(1, pre.getPublicKey(), pre));
    signed.set(1, signal.SignedPreKeyRecord.new(1, Date.now(), spk.getPublicKey(), spk, spkSig));
    kyber.set(1, signal.KyberPreKeyRecord.new(1, Date.now(), kem, kemSig));
    return signal.PreKeyBundle.new(
      registrationId,
      1,
      1,
      pre.getPublicKey(),
      1,
      spk.getPublicKey(),
      spkSig,
      pair.publicKey,
      1,
      kem.getPublicKey(),
      kemSig,
    );
  }
  const encrypt = async (to, m) => signal.signalEncrypt(m, to.address, address, store, store);
  async function decrypt(from, c) {
    if (c.type() === signal.CiphertextMessageType.PreKey) {
      const m = signal.PreKeySignalMessage.deserialize(c.serialize());
      return signal.signalDecryptPreKey(m, from.address, address, store, store, store, store, store);
    }
    return signal.signalDecrypt(
      signal.SignalMessage.deserialize(c.serialize()),
      from.address,
      address,
      store,
      store,
    );
  }
  return { address, store, bundle, encrypt, decrypt };
}

async function rawPair(serialized) {
  const alice = rawDevice('alice', serialized);
  const bob = rawDevice('bob', serialized);
  await signal.processPreKeyBundle(bob.bundle(), bob.address, alice.address, alice.store, alice.store);
  await bob.decrypt(alice, await alice.encrypt(bob, plaintext));
  await alice.decrypt(bob, await bob.encrypt(alice, plaintext));
  return async () => {
    const c = await alice.encrypt(bob, plaintext);
    // The wire carries bytes: the receiver parses them, as the adapter's receiver does.
    const body = c.serialize();
    await signal.signalDecrypt(
      signal.SignalMessage.deserialize(body),
      alice.address,
      bob.address,
      bob.store,
      bob.store,
    );
  };
}

// ------------------------------------------------------------------------------------ adapter

const hooks = { changed() {}, trust: () => true };

async function adapterPair() {
  const alice = { crypto: libsignalCrypto(), address: { user: 'alice', device: 'd1' } };
  const bob = { crypto: libsignalCrypto(), address: { user: 'bob', device: 'd1' } };
  const ids = [];
  for (const d of [alice, bob])
    ids.push(await d.crypto.open(clientCryptoState(memoryClientStore()), d.address, hooks));
  const keys = await bob.crypto.initialKeys(1);
  await alice.crypto.processBundle({
    ...bob.address,
    registrationId: ids[1].registrationId,
    identityKey: ids[1].identityKey,
    signedPreKey: keys.signedPreKey,
    kyberPreKey: keys.kyberPreKeys[0],
    preKey: keys.preKeys[0],
  });
  await bob.crypto.decrypt(alice.address, await alice.crypto.encrypt(bob.address, plaintext));
  await alice.crypto.decrypt(bob.address, await bob.crypto.encrypt(alice.address, plaintext));
  return async () => {
    const c = await alice.crypto.encrypt(bob.address, plaintext);
    if (c.kind !== 'message') throw new Error(`expected an established session, got ${c.kind}`);
    await bob.crypto.decrypt(alice.address, c);
  };
}

// ---------------------------------------------------------------------------------- measuring

/** Messages per second of `step` over about `ms`. */
async function measure(step, ms) {
  for (let i = 0; i < 200; i++) await step(); // warm-up
  let n = 0;
  const start = performance.now();
  const end = start + ms;
  while (performance.now() < end) {
    for (let i = 0; i < 100; i++) await step();
    n += 100;
  }
  return n / ((performance.now() - start) / 1000);
}

/** The subjects, as the runner reports them (system names). */
export const SUBJECTS = ['libsignal', 'libsignal-serialized', 'postbox-libsignal'];

export async function run({ ms, round = 0 }) {
  const steps = {
    libsignal: await rawPair(false),
    'libsignal-serialized': await rawPair(true),
    'postbox-libsignal': await adapterPair(),
  };
  const order = SUBJECTS.map((_, k) => SUBJECTS[(k + round) % SUBJECTS.length]);
  const results = [];
  for (const name of order) {
    results.push({
      system: name,
      metric: 'msgs_per_s',
      value: await measure(steps[name], ms),
      unit: 'msg/s',
    });
  }
  return { results };
}
