/**
 * The test-only crypto adapter: it does NOT encrypt. It keeps the same state a real adapter keeps
 * (identity, per-device sessions, per-group sender keys) and fails the same way when that state
 * is missing, so engine tests exercise the bundle, session and sender-key flows with readable
 * bodies. Browser-safe.
 * @packageDocumentation
 */
import {
  IdentityGuard,
  NoSessionError,
  addressKey,
  bytesEqual,
  concatBytes,
  identityKeyOf,
  identityRecord,
  keys,
  nextKeyIds,
  opened,
  toHex,
  transact,
  type StateTxn,
} from './common.js';
import { keyedLock } from './lock.js';
import {
  DecryptError,
  type Ciphertext,
  type CryptoAdapter,
  type CryptoAddress,
  type CryptoStateStore,
  type DeviceIdentity,
  type IdentityStatus,
  type KeyBundle,
  type KeyUpload,
  type PublicPreKey,
  type SignedPublicKey,
} from './types.js';

/** Options of {@link insecurePlaintextCrypto}. */
export interface PlaintextCryptoOptions {
  /**
   * Source of uniform randoms in [0, 1) for identity keys, registration ids and distribution ids,
   * so a simulation can be deterministic from one seed.
   * @default the platform's `crypto.getRandomValues`
   */
  random?: () => number;
}

let warned = false;

/** Warns once per process when the adapter is created outside a test run. */
function warnOutsideTests(): void {
  if (warned) return;
  const env = typeof process === 'undefined' ? undefined : process.env;
  if (env && (env.VITEST || env.NODE_ENV === 'test')) return;
  warned = true;
  console.warn(
    'postbox: insecurePlaintextCrypto() does NOT encrypt: messages travel and are stored in the clear. ' +
      'Use it in tests only; use postbox/crypto/libsignal in an app.',
  );
}

/** Tags a plaintext-adapter distribution message ("PBSK"). */
const DISTRIBUTION_MAGIC = [0x50, 0x42, 0x53, 0x4b];
/** Length of a distribution id (a UUID's bytes). */
const DIST_ID_BYTES = 16;

const utf8 = new TextEncoder();

/**
 * A non-cryptographic hash (FNV-1a lanes with a murmur finalizer) of `data` into `length` bytes:
 * deterministic and synchronous, which is all a fake signature and a fake fingerprint need.
 */
function mixHash(data: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let lane = 0; lane * 4 < length; lane++) {
    let h = (0x811c9dc5 ^ Math.imul(lane + 1, 0x9e3779b1)) >>> 0;
    for (let i = 0; i < data.byteLength; i++) h = Math.imul(h ^ data[i]!, 0x01000193);
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    for (let b = 0; b < 4 && lane * 4 + b < length; b++) out[lane * 4 + b] = (h >>> (24 - 8 * b)) & 0xff;
  }
  return out;
}

/** The fake signature of `key` by `identityKey`: anyone can make one; it only catches corruption. */
const fakeSign = (identityKey: Uint8Array, key: Uint8Array): Uint8Array =>
  mixHash(concatBytes(identityKey, key), 64);

/** Thirty digits from a device's address and identity key, as each half of a safety number. */
function fingerprintHalf(address: CryptoAddress, identityKey: Uint8Array): string {
  const h = mixHash(concatBytes(utf8.encode(addressKey(address)), identityKey), 30);
  let digits = '';
  for (let i = 0; i < 30; i += 5) {
    const low = ((h[i + 1]! << 24) | (h[i + 2]! << 16) | (h[i + 3]! << 8) | h[i + 4]!) >>> 0;
    const n = (h[i]! * 2 ** 32 + low) % 100000;
    digits += String(n).padStart(5, '0');
  }
  return digits;
}

/**
 * A crypto adapter that does not encrypt, for tests only (`insecure: true`; kind `plaintext`).
 * Creating one outside a test run (neither `VITEST` nor `NODE_ENV=test` set) prints a warning once.
 *
 * What it keeps of the real contract, so the engine's flows run as they will with libsignal:
 * - `encrypt` fails with {@link NoSessionError} until `processBundle` (or a first message from
 *   the peer) made a session; `archiveSession` drops it again. Body: the plaintext itself.
 * - Identity keys are random per device and persisted; `processBundle` checks the (fake)
 *   signatures, reports a changed identity and asks `hooks.trust`, like a real adapter.
 * - Group messages carry the sender's 16-byte distribution id before the plaintext, so
 *   `groupDecrypt` fails with `no_sender_key` for a sender whose (current) distribution this
 *   device has not processed, and a key rotation is observable.
 *
 * What it does not do: secrecy, authenticity, replay detection (a replay decrypts again).
 *
 * @example
 * ```ts
 * import { insecurePlaintextCrypto } from 'postbox/crypto';
 * const crypto = insecurePlaintextCrypto(); // tests only
 * ```
 */
export function insecurePlaintextCrypto(options: PlaintextCryptoOptions = {}): CryptoAdapter {
  warnOutsideTests();
  const randomBytes = (n: number): Uint8Array => {
    const b = new Uint8Array(n);
    if (options.random) for (let i = 0; i < n; i++) b[i] = Math.floor(options.random() * 256);
    else globalThis.crypto.getRandomValues(b);
    return b;
  };
  const lock = keyedLock();
  let state: CryptoStateStore | undefined;
  let self: CryptoAddress | undefined;
  let me: DeviceIdentity | undefined;
  let guard: IdentityGuard | undefined;

  const run = async <T>(key: string, fn: (txn: StateTxn) => Promise<T>): Promise<T> =>
    transact(lock, opened(state), key, fn);

  const newKey = (): Uint8Array => {
    const k = randomBytes(33);
    k[0] = 0x05; // the type byte of a serialized Curve25519 public key, for realistic shapes
    return k;
  };

  async function makeKeys(txn: StateTxn, what: { signed: boolean; count: number }): Promise<KeyUpload> {
    const id = opened(me);
    const signed = (keyId: number): SignedPublicKey => {
      const key = newKey();
      return { id: keyId, key, signature: fakeSign(id.identityKey, key) };
    };
    const upload: KeyUpload = { registrationId: id.registrationId, identityKey: id.identityKey };
    if (what.signed) {
      upload.signedPreKey = signed((await nextKeyIds(txn, 'spk', 1))[0]!);
      upload.lastResortKyber = signed((await nextKeyIds(txn, 'kpk', 1))[0]!);
    }
    if (what.count > 0) {
      upload.preKeys = (await nextKeyIds(txn, 'pk', what.count)).map((keyId): PublicPreKey => ({
        id: keyId,
        key: newKey(),
      }));
      upload.kyberPreKeys = (await nextKeyIds(txn, 'kpk', what.count)).map(signed);
    }
    return upload;
  }

  /** This device's distribution id for `group`, created on first use. */
  async function distributionId(txn: StateTxn, group: string): Promise<Uint8Array> {
    const stored = await txn.get(keys.group(group));
    if (stored) return stored;
    const fresh = randomBytes(DIST_ID_BYTES);
    txn.set(keys.group(group), fresh);
    return fresh;
  }

  return {
    name: 'plaintext',
    insecure: true,

    async open(store, address, hooks) {
      state = store;
      self = { ...address };
      guard = new IdentityGuard(hooks);
      const stored = identityRecord.decode(await store.get(keys.identity));
      if (stored) {
        me = { registrationId: stored.registrationId, identityKey: stored.key };
      } else {
        me = { registrationId: identityRecord.newId(randomBytes(2)), identityKey: newKey() };
        await store.put([
          { key: keys.identity, value: identityRecord.encode(me.registrationId, me.identityKey) },
        ]);
      }
      return { registrationId: me.registrationId, identityKey: me.identityKey.slice() };
    },

    initialKeys: (count) => run(keys.prekeys, (txn) => makeKeys(txn, { signed: true, count })),
    moreKeys: (count) => run(keys.prekeys, (txn) => makeKeys(txn, { signed: false, count })),
    rotateKeys: () => run(keys.prekeys, (txn) => makeKeys(txn, { signed: true, count: 0 })),

    async hasSession(peer) {
      return (await opened(state).get(keys.session(peer))) !== undefined;
    },

    async processBundle(bundle: KeyBundle): Promise<IdentityStatus> {
      const peer = { user: bundle.user, device: bundle.device };
      for (const k of [bundle.signedPreKey, bundle.kyberPreKey]) {
        if (!bytesEqual(fakeSign(bundle.identityKey, k.key), k.signature)) {
          throw new Error(`key bundle of ${peer.user}/${peer.device}: prekey ${k.id} has a bad signature`);
        }
      }
      return run(keys.session(peer), async (txn) => {
        const status = await opened(guard).require(txn, peer, bundle.identityKey);
        opened(guard).save(txn, peer, bundle.identityKey);
        txn.set(keys.session(peer), new Uint8Array([1]));
        return status;
      });
    },

    encrypt: (peer, plaintext) =>
      run(keys.session(peer), async (txn): Promise<Ciphertext> => {
        if (!(await txn.get(keys.session(peer)))) throw new NoSessionError(peer);
        const known = await txn.get(identityKeyOf(peer));
        if (known) await opened(guard).require(txn, peer, known);
        return { kind: 'plaintext', body: plaintext.slice() };
      }),

    decrypt: (peer, ciphertext) =>
      run(keys.session(peer), async (txn) => {
        if (ciphertext.kind !== 'plaintext') {
          throw new DecryptError(`the plaintext adapter cannot decrypt a '${ciphertext.kind}' message`);
        }
        // Like a prekey message, a first message from a device starts the session.
        if (!(await txn.get(keys.session(peer)))) txn.set(keys.session(peer), new Uint8Array([1]));
        return ciphertext.body.slice();
      }),

    archiveSession: (peer) =>
      run(keys.session(peer), async (txn) => {
        txn.set(keys.session(peer), undefined);
      }),

    groupDistribution: (group) =>
      run(keys.group(group), async (txn) =>
        concatBytes(new Uint8Array(DISTRIBUTION_MAGIC), await distributionId(txn, group)),
      ),

    async processGroupDistribution(from, group, distribution) {
      const magic = distribution.subarray(0, DISTRIBUTION_MAGIC.length);
      if (
        distribution.byteLength !== DISTRIBUTION_MAGIC.length + DIST_ID_BYTES ||
        magic.some((b, i) => b !== DISTRIBUTION_MAGIC[i])
      ) {
        throw new Error(`not a plaintext-adapter sender key distribution (from ${from.user}/${from.device})`);
      }
      const key = keys.senderKey(from, toHex(distribution.subarray(DISTRIBUTION_MAGIC.length)));
      await run(key, async (txn) => txn.set(key, utf8.encode(group)));
    },

    groupEncrypt: (group, plaintext) =>
      run(keys.group(group), async (txn) => concatBytes(await distributionId(txn, group), plaintext)),

    async groupDecrypt(from, group, ciphertext) {
      if (ciphertext.byteLength < DIST_ID_BYTES) throw new DecryptError('group message too short');
      const key = keys.senderKey(from, toHex(ciphertext.subarray(0, DIST_ID_BYTES)));
      const stored = await opened(state).get(key);
      if (!stored || new TextDecoder().decode(stored) !== group) {
        throw new DecryptError(
          `no sender key of ${from.user}/${from.device} for group ${group}: it must send its distribution`,
          'no_sender_key',
        );
      }
      return ciphertext.slice(DIST_ID_BYTES);
    },

    rotateGroupKey: (group) =>
      run(keys.group(group), async (txn) => {
        txn.set(keys.group(group), randomBytes(DIST_ID_BYTES));
      }),

    async peerIdentity(peer) {
      return opened(state).get(identityKeyOf(peer));
    },

    async safetyNumber(peer) {
      const theirs = await opened(state).get(identityKeyOf(peer));
      if (!theirs) return undefined;
      const halves = [fingerprintHalf(opened(self), opened(me).identityKey), fingerprintHalf(peer, theirs)];
      return halves.sort().join('');
    },
  };
}
