/**
 * The Signal protocol adapter, on `@signalapp/libsignal-client` (an optional peer dependency,
 * AGPL-3.0, Node and Electron only): PQXDH sessions from directory bundles (Kyber prekeys are
 * mandatory), the double ratchet for pairwise messages, sender keys for groups, and Signal's
 * safety numbers.
 *
 * What this module adds to the library, which does no locking and leaves policy to its stores:
 * - every operation on a session (per peer device) and on a sender key (per sender and
 *   distribution id) runs alone, under a {@link keyedLock}: concurrent encrypts never reuse a
 *   message key and concurrent decrypts keep replay protection;
 * - every operation reads and writes the state through one transaction committed only on
 *   success, so a failed decrypt changes nothing (and a successful one is atomic);
 * - the most recently used session records stay parsed in memory (libsignal never mutates a
 *   record it loaded), so an established session costs no store read and no parse per message;
 * - a last-resort Kyber key is refused a second time with the same signed prekey and base key;
 * - identity keys are compared, reported and trusted through the engine's {@link IdentityHooks}.
 *
 * State keys (in the {@link CryptoStateStore} given to `open`): `id` (identity), `ctr/<kind>`
 * (key id counters), `cur` (current and previous signed prekey and last-resort Kyber ids),
 * `pk/<id>`, `spk/<id>`, `kpk/<id>` (one-time Kyber), `klr/<id>` (last-resort Kyber),
 * `kused/<kyber id>/<signed id>/<base key>`, `idk/<device>`, `sess/<device>`, `grp/<group>`
 * (this device's distribution id), `sk/<device>/<distribution id>` (sender keys).
 * @packageDocumentation
 */
import * as signal from '@signalapp/libsignal-client';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  IdentityGuard,
  NoSessionError,
  RecentMap,
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
  UntrustedIdentityError,
  type Ciphertext,
  type CiphertextKind,
  type CryptoAdapter,
  type CryptoAddress,
  type CryptoStateStore,
  type IdentityStatus,
  type KeyBundle,
  type KeyUpload,
  type SignedPublicKey,
} from './types.js';

/** Options of {@link libsignalCrypto}. */
export interface LibsignalCryptoOptions {
  /**
   * The clock, in milliseconds since the epoch: prekey timestamps and session expiry.
   * @default Date.now
   */
  now?: () => number;
}

/** Signal's safety number parameters (fingerprint version 2, 5200 hash iterations). */
const FINGERPRINT_VERSION = 2;
const FINGERPRINT_ITERATIONS = 5200;
/** How many parsed session records an adapter keeps in memory (the most recently used). */
const SESSION_CACHE = 512;
/** libsignal device ids are small numbers; postbox devices each get their own address name instead. */
const DEVICE_ID = 1;

/** libsignal's inputs are typed over `ArrayBuffer`; ours may be any `Uint8Array` view. */
const ab = (u: Uint8Array): Uint8Array<ArrayBuffer> => u as Uint8Array<ArrayBuffer>;

const utf8 = new TextEncoder();
const utf8Decode = new TextDecoder();

/** The current and previous signed prekey and last-resort Kyber key ids, as stored at `cur`. */
interface CurrentKeys {
  spk: [number, number];
  klr: [number, number];
}

function decodeCurrent(b: Uint8Array | undefined): CurrentKeys {
  if (!b || b.byteLength !== 16) return { spk: [0, 0], klr: [0, 0] };
  const v = new DataView(b.buffer, b.byteOffset, 16);
  return { spk: [v.getUint32(0), v.getUint32(4)], klr: [v.getUint32(8), v.getUint32(12)] };
}

function encodeCurrent(c: CurrentKeys): Uint8Array {
  const out = new Uint8Array(16);
  const v = new DataView(out.buffer);
  [...c.spk, ...c.klr].forEach((n, i) => v.setUint32(i * 4, n));
  return out;
}

/** A stored sender key: the group it belongs to (length-prefixed UTF-8), then libsignal's record. */
const senderKeyRecord = {
  encode(group: string, record: Uint8Array): Uint8Array {
    const g = utf8.encode(group);
    return concatBytes(new Uint8Array([g.byteLength >> 8, g.byteLength & 0xff]), g, record);
  },
  decode(b: Uint8Array): { group: string; record: Uint8Array } | undefined {
    if (b.byteLength < 2) return undefined;
    const n = (b[0]! << 8) | b[1]!;
    if (b.byteLength < 2 + n) return undefined;
    return { group: utf8Decode.decode(b.subarray(2, 2 + n)), record: b.subarray(2 + n) };
  },
};

/** This device's keys, loaded once by `open` (libsignal's default store re-derives them per call). */
interface Self {
  address: CryptoAddress;
  protocolAddress: signal.ProtocolAddress;
  registrationId: number;
  pair: signal.IdentityKeyPair;
  publicKey: Uint8Array;
}

/**
 * The libsignal stores of one operation, over its transaction. libsignal calls them while it
 * works; they record what went wrong (an untrusted identity, a missing sender key or session) so
 * the failure can be reported as the typed error the contract names.
 */
class Operation
  implements
    signal.SessionStore,
    signal.IdentityKeyStore,
    signal.PreKeyStore,
    signal.SignedPreKeyStore,
    signal.KyberPreKeyStore,
    signal.SenderKeyStore
{
  untrusted = false;
  noSession = false;
  noSenderKey = false;
  /** The sender identity of a message being decrypted, and (once libsignal saved it) its status. */
  private received: { key: Uint8Array; status?: IdentityStatus } | undefined;
  /** The identity key (hex) already checked and trusted in this operation. */
  private trusted: string | undefined;
  private readonly sessions = new Map<string, signal.SessionRecord | null>();

  constructor(
    readonly txn: StateTxn,
    private readonly me: Self,
    private readonly guard: IdentityGuard,
    /** The peer device the operation is about (sessions, identities). */
    readonly peer: CryptoAddress,
    /** The group of a sender-key operation. */
    readonly group: string,
    /** The adapter's parsed session records, as committed (libsignal never mutates a loaded record). */
    private readonly records: RecentMap<signal.SessionRecord>,
  ) {}

  /** Checks and trusts `key` for the peer (once per operation), as {@link IdentityGuard.require}. */
  async requireTrusted(key: Uint8Array): Promise<IdentityStatus> {
    const status = await this.guard.require(this.txn, this.peer, key);
    this.trusted = toHex(key);
    return status;
  }

  // SessionStore
  async saveSession(name: signal.ProtocolAddress, record: signal.SessionRecord): Promise<void> {
    const key = name.name();
    this.sessions.set(key, record);
    this.txn.set(`sess/${key}`, record.serialize());
    this.txn.afterCommit(() => this.records.set(key, record));
  }
  async getSession(name: signal.ProtocolAddress): Promise<signal.SessionRecord | null> {
    const key = name.name();
    let record = this.sessions.get(key);
    if (record === undefined) {
      record = this.records.get(key) ?? null;
      if (!record) {
        const bytes = await this.txn.get(`sess/${key}`);
        record = bytes ? signal.SessionRecord.deserialize(ab(bytes)) : null;
        if (record) this.records.set(key, record); // as stored: committed state
      }
      this.sessions.set(key, record);
    }
    if (!record) this.noSession = true;
    return record;
  }
  async getExistingSessions(addresses: signal.ProtocolAddress[]): Promise<signal.SessionRecord[]> {
    const out: signal.SessionRecord[] = [];
    for (const a of addresses) {
      const record = await this.getSession(a);
      if (!record) throw new Error(`no session with ${a.name()}`);
      out.push(record);
    }
    return out;
  }

  // IdentityKeyStore
  async getIdentityKey(): Promise<signal.PrivateKey> {
    return this.me.pair.privateKey;
  }
  async getIdentityKeyPair(): Promise<signal.IdentityKeyPair> {
    return this.me.pair;
  }
  async getLocalRegistrationId(): Promise<number> {
    return this.me.registrationId;
  }
  async saveIdentity(name: signal.ProtocolAddress, key: signal.PublicKey): Promise<signal.IdentityChange> {
    const bytes = key.serialize();
    const status = await this.guard.status(this.txn, this.peerNamed(name), bytes);
    if (this.received && bytesEqual(this.received.key, bytes)) this.received.status = status;
    if (status !== 'same') this.txn.set(`idk/${name.name()}`, bytes);
    return status === 'changed'
      ? signal.IdentityChange.ReplacedExisting
      : signal.IdentityChange.NewOrUnchanged;
  }
  async isTrustedIdentity(
    name: signal.ProtocolAddress,
    key: signal.PublicKey,
    direction: signal.Direction,
  ): Promise<boolean> {
    const bytes = key.serialize();
    if (direction === signal.Direction.Receiving) {
      // libsignal asks before the message is authenticated: a forged message must not reach the
      // hooks. The verdict is taken once it decrypted (trustReceived), before anything is kept.
      this.peerNamed(name);
      this.received = { key: bytes };
      return true;
    }
    if (this.trusted === toHex(bytes)) return true;
    const { trusted } = await this.guard.check(this.txn, this.peerNamed(name), bytes);
    if (trusted) this.trusted = toHex(bytes);
    else this.untrusted = true;
    return trusted;
  }
  async getIdentity(name: signal.ProtocolAddress): Promise<signal.PublicKey | null> {
    const bytes = await this.txn.get(`idk/${name.name()}`);
    return bytes ? signal.PublicKey.deserialize(ab(bytes)) : null;
  }

  // PreKeyStore
  async savePreKey(id: number, record: signal.PreKeyRecord): Promise<void> {
    this.txn.set(`pk/${id}`, record.serialize());
  }
  async getPreKey(id: number): Promise<signal.PreKeyRecord> {
    return signal.PreKeyRecord.deserialize(ab(await this.load(`pk/${id}`, 'one-time prekey', id)));
  }
  async removePreKey(id: number): Promise<void> {
    this.txn.set(`pk/${id}`, undefined);
  }

  // SignedPreKeyStore
  async saveSignedPreKey(id: number, record: signal.SignedPreKeyRecord): Promise<void> {
    this.txn.set(`spk/${id}`, record.serialize());
  }
  async getSignedPreKey(id: number): Promise<signal.SignedPreKeyRecord> {
    return signal.SignedPreKeyRecord.deserialize(ab(await this.load(`spk/${id}`, 'signed prekey', id)));
  }

  // KyberPreKeyStore
  async saveKyberPreKey(id: number, record: signal.KyberPreKeyRecord): Promise<void> {
    this.txn.set(`kpk/${id}`, record.serialize());
  }
  async getKyberPreKey(id: number): Promise<signal.KyberPreKeyRecord> {
    const bytes = (await this.txn.get(`kpk/${id}`)) ?? (await this.load(`klr/${id}`, 'Kyber prekey', id));
    return signal.KyberPreKeyRecord.deserialize(ab(bytes));
  }
  async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: signal.PublicKey): Promise<void> {
    if (await this.txn.get(`kpk/${id}`)) {
      this.txn.set(`kpk/${id}`, undefined); // one-time: gone
      return;
    }
    // Last resort: reusable, but never twice with the same signed prekey and base key (a replay).
    const used = `kused/${id}/${signedPreKeyId}/${toHex(baseKey.serialize())}`;
    if (await this.txn.get(used)) throw new Error(`last-resort Kyber prekey ${id} replayed`);
    this.txn.set(used, new Uint8Array([1]));
  }

  // SenderKeyStore
  async saveSenderKey(
    sender: signal.ProtocolAddress,
    distributionId: string,
    record: signal.SenderKeyRecord,
  ) {
    this.txn.set(
      `sk/${sender.name()}/${distributionId}`,
      senderKeyRecord.encode(this.group, record.serialize()),
    );
  }
  async getSenderKey(
    sender: signal.ProtocolAddress,
    distributionId: string,
  ): Promise<signal.SenderKeyRecord | null> {
    const bytes = await this.txn.get(`sk/${sender.name()}/${distributionId}`);
    const stored = bytes && senderKeyRecord.decode(bytes);
    // A key of another group is no key for this one.
    if (!stored || stored.group !== this.group) {
      this.noSenderKey = true;
      return null;
    }
    return signal.SenderKeyRecord.deserialize(ab(stored.record));
  }

  /**
   * After a message decrypted: reports the sender's identity to the hooks (a change was reported
   * when libsignal saved it) and throws an {@link UntrustedIdentityError} when `hooks.trust` says no.
   */
  async trustReceived(): Promise<void> {
    if (!this.received) return;
    const { key } = this.received;
    const status = this.received.status ?? (await this.guard.status(this.txn, this.peer, key));
    if (!(await this.guard.trust(this.peer, key, status))) throw new UntrustedIdentityError(this.peer);
  }

  /** The peer of this operation, checked against the address libsignal names. */
  private peerNamed(name: signal.ProtocolAddress): CryptoAddress {
    if (name.name() !== addressKey(this.peer)) throw new Error(`unexpected address ${name.name()}`);
    return this.peer;
  }

  private async load(key: string, what: string, id: number): Promise<Uint8Array> {
    const bytes = await this.txn.get(key);
    if (!bytes) throw new Error(`no ${what} ${id} (used up or rotated away)`);
    return bytes;
  }
}

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/** The typed error for a failed decrypt (the transaction is not committed: nothing changed). */
function decryptFailure(op: Operation, error: unknown, what: string): Error {
  if (error instanceof UntrustedIdentityError || error instanceof DecryptError) return error;
  if (op.untrusted) return new UntrustedIdentityError(op.peer);
  const from = `${op.peer.user}/${op.peer.device}`;
  if (signal.LibSignalErrorBase.is(error, signal.ErrorCode.DuplicatedMessage)) {
    return new DecryptError(`${what} from ${from} was already decrypted (a replay)`, 'duplicate', {
      cause: error,
    });
  }
  if (op.noSenderKey) {
    return new DecryptError(`no sender key of ${from} for group ${op.group}`, 'no_sender_key', {
      cause: error,
    });
  }
  const message = messageOf(error);
  if (op.noSession)
    return new DecryptError(`no session with ${from}: ${message}`, 'no_session', { cause: error });
  return new DecryptError(`${what} from ${from} does not decrypt: ${message}`, 'other', { cause: error });
}

/**
 * The Signal protocol {@link CryptoAdapter}, on `@signalapp/libsignal-client` (install it: it is
 * an optional peer dependency, AGPL-3.0). Node and Electron only.
 *
 * Each postbox device has its own identity and is one libsignal address (its name encodes user
 * and device, device id 1). A first message to a device is a `prekey` message (about 1.9 KB: it
 * carries the PQXDH key agreement) until the device answers; later ones are `message`s (about
 * 100 bytes over the plaintext).
 *
 * @example
 * ```ts
 * import { libsignalCrypto } from 'postbox/crypto/libsignal';
 * const crypto = libsignalCrypto();
 * ```
 */
export function libsignalCrypto(options: LibsignalCryptoOptions = {}): CryptoAdapter {
  const now = options.now ?? Date.now;
  const lock = keyedLock();
  const addresses = new Map<string, signal.ProtocolAddress>();
  const records = new RecentMap<signal.SessionRecord>(SESSION_CACHE);
  let state: CryptoStateStore | undefined;
  let me: Self | undefined;
  let guard: IdentityGuard | undefined;

  const protocolAddress = (peer: CryptoAddress): signal.ProtocolAddress => {
    const name = addressKey(peer);
    let a = addresses.get(name);
    if (!a) addresses.set(name, (a = signal.ProtocolAddress.new(name, DEVICE_ID)));
    return a;
  };

  /** Runs `fn` on an {@link Operation} under the lock(s) of `lockKeys`, committing on success. */
  const run = async <T>(
    lockKeys: string | string[],
    peer: CryptoAddress,
    group: string,
    fn: (op: Operation) => Promise<T>,
  ): Promise<T> =>
    transact(lock, opened(state), lockKeys, (txn) =>
      fn(new Operation(txn, opened(me), opened(guard), peer, group, records)),
    );

  /** New prekeys: a signed prekey and a last-resort Kyber key when `rotate`, and `count` one-time keys of each kind. */
  async function makeKeys(txn: StateTxn, rotate: boolean, count: number): Promise<KeyUpload> {
    const self = opened(me);
    const signer = self.pair.privateKey;
    const at = now();
    const upload: KeyUpload = { registrationId: self.registrationId, identityKey: self.publicKey };
    const kyber = (id: number): { record: signal.KyberPreKeyRecord; key: SignedPublicKey } => {
      const pair = signal.KEMKeyPair.generate();
      const key = pair.getPublicKey().serialize();
      const signature = signer.sign(key);
      return { record: signal.KyberPreKeyRecord.new(id, at, pair, signature), key: { id, key, signature } };
    };
    if (rotate) {
      const current = decodeCurrent(await txn.get('cur'));
      const [spkId] = await nextKeyIds(txn, 'spk', 1);
      const [klrId] = await nextKeyIds(txn, 'kpk', 1);
      const priv = signal.PrivateKey.generate();
      const pub = priv.getPublicKey();
      const signature = signer.sign(pub.serialize());
      txn.set(`spk/${spkId}`, signal.SignedPreKeyRecord.new(spkId!, at, pub, priv, signature).serialize());
      upload.signedPreKey = { id: spkId!, key: pub.serialize(), signature };
      const lastResort = kyber(klrId!);
      txn.set(`klr/${klrId}`, lastResort.record.serialize());
      upload.lastResortKyber = lastResort.key;
      // The previous keys stay for sessions started with them; the ones before go.
      const [, oldSpk] = current.spk;
      const [, oldKlr] = current.klr;
      if (oldSpk) txn.set(`spk/${oldSpk}`, undefined);
      if (oldKlr) {
        txn.set(`klr/${oldKlr}`, undefined);
        for (const { key } of await opened(state).list(`kused/${oldKlr}/`)) txn.set(key, undefined);
      }
      txn.set('cur', encodeCurrent({ spk: [spkId!, current.spk[0]], klr: [klrId!, current.klr[0]] }));
    }
    if (count > 0) {
      upload.preKeys = [];
      for (const id of await nextKeyIds(txn, 'pk', count)) {
        const priv = signal.PrivateKey.generate();
        txn.set(`pk/${id}`, signal.PreKeyRecord.new(id, priv.getPublicKey(), priv).serialize());
        upload.preKeys.push({ id, key: priv.getPublicKey().serialize() });
      }
      upload.kyberPreKeys = [];
      for (const id of await nextKeyIds(txn, 'kpk', count)) {
        const k = kyber(id);
        txn.set(`kpk/${id}`, k.record.serialize());
        upload.kyberPreKeys.push(k.key);
      }
    }
    return upload;
  }

  /** This device's distribution id for `group`, and its sender key, created on first use. */
  async function ownSenderKey(op: Operation, group: string): Promise<string> {
    const stored = await op.txn.get(keys.group(group));
    const distributionId = stored ? utf8Decode.decode(stored) : randomUUID();
    if (!stored) op.txn.set(keys.group(group), utf8.encode(distributionId));
    const self = opened(me).protocolAddress;
    if (!(await op.getSenderKey(self, distributionId))) {
      await signal.SenderKeyDistributionMessage.create(self, distributionId, op);
    }
    return distributionId;
  }

  return {
    name: 'libsignal',
    insecure: false,

    async open(store, address, hooks) {
      state = store;
      guard = new IdentityGuard(hooks);
      const stored = identityRecord.decode(await store.get(keys.identity));
      let registrationId: number;
      let pair: signal.IdentityKeyPair;
      if (stored) {
        registrationId = stored.registrationId;
        pair = signal.IdentityKeyPair.deserialize(ab(stored.key));
      } else {
        registrationId = identityRecord.newId(randomBytes(2));
        pair = signal.IdentityKeyPair.generate();
        await store.put([
          { key: keys.identity, value: identityRecord.encode(registrationId, pair.serialize()) },
        ]);
      }
      const self = { ...address };
      me = {
        address: self,
        protocolAddress: protocolAddress(self),
        registrationId,
        pair,
        publicKey: pair.publicKey.serialize(),
      };
      return { registrationId, identityKey: me.publicKey.slice() };
    },

    initialKeys: async (count) =>
      transact(lock, opened(state), keys.prekeys, (txn) => makeKeys(txn, true, count)),
    moreKeys: async (count) =>
      transact(lock, opened(state), keys.prekeys, (txn) => makeKeys(txn, false, count)),
    rotateKeys: async () => transact(lock, opened(state), keys.prekeys, (txn) => makeKeys(txn, true, 0)),

    async hasSession(peer) {
      let record = records.get(addressKey(peer));
      if (!record) {
        const bytes = await opened(state).get(keys.session(peer));
        if (!bytes) return false;
        record = signal.SessionRecord.deserialize(ab(bytes));
      }
      return record.hasCurrentState(new Date(now()));
    },

    async processBundle(bundle: KeyBundle): Promise<IdentityStatus> {
      const peer = { user: bundle.user, device: bundle.device };
      const who = `key bundle of ${peer.user}/${peer.device}`;
      let prekeyBundle: signal.PreKeyBundle;
      try {
        const identity = signal.PublicKey.deserialize(ab(bundle.identityKey));
        const { signedPreKey: spk, kyberPreKey: kyber, preKey } = bundle;
        // Signatures first, so a forged bundle is refused before any identity hook hears of it.
        if (!identity.verify(ab(spk.key), ab(spk.signature))) throw new Error('bad signed prekey signature');
        if (!identity.verify(ab(kyber.key), ab(kyber.signature)))
          throw new Error('bad Kyber prekey signature');
        prekeyBundle = signal.PreKeyBundle.new(
          bundle.registrationId,
          DEVICE_ID,
          preKey ? preKey.id : null,
          preKey ? signal.PublicKey.deserialize(ab(preKey.key)) : null,
          spk.id,
          signal.PublicKey.deserialize(ab(spk.key)),
          ab(spk.signature),
          identity,
          kyber.id,
          signal.KEMPublicKey.deserialize(ab(kyber.key)),
          ab(kyber.signature),
        );
      } catch (error) {
        throw new Error(`${who} is invalid: ${messageOf(error)}`, { cause: error });
      }
      return run(keys.session(peer), peer, '', async (op) => {
        const status = await op.requireTrusted(bundle.identityKey);
        try {
          await signal.processPreKeyBundle(
            prekeyBundle,
            protocolAddress(peer),
            opened(me).protocolAddress,
            op,
            op,
            new Date(now()),
          );
        } catch (error) {
          if (op.untrusted) throw new UntrustedIdentityError(peer);
          throw new Error(`${who} was refused: ${messageOf(error)}`, { cause: error });
        }
        return status;
      });
    },

    encrypt: async (peer, plaintext) =>
      run(keys.session(peer), peer, '', async (op): Promise<Ciphertext> => {
        const address = protocolAddress(peer);
        const session = await op.getSession(address);
        if (!session?.hasCurrentState(new Date(now()))) throw new NoSessionError(peer);
        let message: signal.CiphertextMessage;
        try {
          message = await signal.signalEncrypt(
            ab(plaintext),
            address,
            opened(me).protocolAddress,
            op,
            op,
            new Date(now()),
          );
        } catch (error) {
          throw op.untrusted ? new UntrustedIdentityError(peer) : error;
        }
        const kind: CiphertextKind =
          message.type() === signal.CiphertextMessageType.PreKey ? 'prekey' : 'message';
        return { kind, body: message.serialize() };
      }),

    decrypt(peer, ciphertext) {
      const { kind, body } = ciphertext;
      if (kind === 'plaintext') {
        // Never accept unencrypted content in place of a message (see CiphertextKind).
        return Promise.reject(
          new DecryptError(`a 'plaintext' message from ${peer.user}/${peer.device} is not decrypted`),
        );
      }
      // A prekey message consumes this device's one-time prekeys: one at a time across peers.
      const lockKeys = kind === 'prekey' ? [keys.session(peer), keys.prekeys] : keys.session(peer);
      return run(lockKeys, peer, '', async (op) => {
        const address = protocolAddress(peer);
        const self = opened(me).protocolAddress;
        try {
          const plaintext =
            kind === 'prekey'
              ? await signal.signalDecryptPreKey(
                  signal.PreKeySignalMessage.deserialize(ab(body)),
                  address,
                  self,
                  op,
                  op,
                  op,
                  op,
                  op,
                )
              : await signal.signalDecrypt(signal.SignalMessage.deserialize(ab(body)), address, self, op, op);
          await op.trustReceived();
          return plaintext;
        } catch (error) {
          if (kind === 'prekey') op.noSession = false; // a prekey message needs no session
          throw decryptFailure(op, error, `a ${kind} message`);
        }
      });
    },

    archiveSession: async (peer) =>
      run(keys.session(peer), peer, '', async (op) => {
        const address = protocolAddress(peer);
        const session = await op.getSession(address);
        if (!session) return;
        session.archiveCurrentState();
        await op.saveSession(address, session);
      }),

    groupDistribution: async (group) =>
      run(keys.group(group), opened(me).address, group, async (op) => {
        const distributionId = await ownSenderKey(op, group);
        const message = await signal.SenderKeyDistributionMessage.create(
          opened(me).protocolAddress,
          distributionId,
          op,
        );
        return message.serialize();
      }),

    async processGroupDistribution(from, group, distribution) {
      let message: signal.SenderKeyDistributionMessage;
      try {
        message = signal.SenderKeyDistributionMessage.deserialize(ab(distribution));
      } catch (error) {
        throw new Error(`not a sender key distribution (from ${from.user}/${from.device})`, { cause: error });
      }
      await run(keys.senderKey(from, message.distributionId()), from, group, (op) =>
        signal.processSenderKeyDistributionMessage(protocolAddress(from), message, op),
      );
    },

    groupEncrypt: async (group, plaintext) =>
      run(keys.group(group), opened(me).address, group, async (op) => {
        const distributionId = await ownSenderKey(op, group);
        const message = await signal.groupEncrypt(
          opened(me).protocolAddress,
          distributionId,
          op,
          ab(plaintext),
        );
        return message.serialize();
      }),

    async groupDecrypt(from, group, ciphertext) {
      let distributionId: string;
      try {
        distributionId = signal.SenderKeyMessage.deserialize(ab(ciphertext)).distributionId();
      } catch (error) {
        throw new DecryptError(`not a group message (from ${from.user}/${from.device})`, 'other', {
          cause: error,
        });
      }
      return run(keys.senderKey(from, distributionId), from, group, async (op) => {
        try {
          return await signal.groupDecrypt(protocolAddress(from), op, ab(ciphertext));
        } catch (error) {
          throw decryptFailure(op, error, 'a group message');
        }
      });
    },

    rotateGroupKey: async (group) =>
      run(keys.group(group), opened(me).address, group, async (op) => {
        const old = await op.txn.get(keys.group(group));
        if (old) op.txn.set(keys.senderKey(opened(me).address, utf8Decode.decode(old)), undefined);
        op.txn.set(keys.group(group), utf8.encode(randomUUID()));
      }),

    async peerIdentity(peer) {
      return opened(state).get(identityKeyOf(peer));
    },

    async safetyNumber(peer) {
      const theirs = await opened(state).get(identityKeyOf(peer));
      if (!theirs) return undefined;
      const self = opened(me);
      return signal.Fingerprint.new(
        FINGERPRINT_ITERATIONS,
        FINGERPRINT_VERSION,
        ab(utf8.encode(addressKey(self.address))),
        self.pair.publicKey,
        ab(utf8.encode(addressKey(peer))),
        signal.PublicKey.deserialize(ab(theirs)),
      )
        .displayableFingerprint()
        .toString();
    },
  };
}
