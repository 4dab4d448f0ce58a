/**
 * The end-to-end encryption contract: what the client engine asks of a crypto adapter, and the
 * public key material that travels through the server's key directory.
 *
 * Every device has its own identity key (postbox's device linking carries no keys, so a linked
 * device cannot share its primary's identity as Signal's linked devices do). A crypto "address"
 * is therefore one device of one user, and safety numbers are per pair of devices.
 * @packageDocumentation
 */

/** One device of one user, as the crypto layer addresses it. */
export interface CryptoAddress {
  user: string;
  device: string;
}

// The key material that travels through the server's key directory is part of the wire
// contract, so it lives in protocol/ (the server's store speaks of it without importing crypto/).
import type { KeyBundle, KeyUpload } from '../protocol/keys.js';
export type { KeyBundle, KeyUpload, PublicPreKey, SignedPublicKey } from '../protocol/keys.js';

/**
 * The kinds of ciphertext an adapter produces. `prekey`: the first messages of a new session
 * (they carry what the recipient needs to start it); `message`: an established session;
 * `plaintext`: not encrypted at all (only the resend request, whose session is broken, and the
 * test-only plaintext adapter).
 */
export type CiphertextKind = 'prekey' | 'message' | 'plaintext';

/** One device's ciphertext. */
export interface Ciphertext {
  kind: CiphertextKind;
  body: Uint8Array;
}

/** What the adapter reports about this device after {@link CryptoAdapter.open}. */
export interface DeviceIdentity {
  registrationId: number;
  /** Serialized identity public key. */
  identityKey: Uint8Array;
}

/**
 * The key-value state an adapter persists: a namespace of the client store (`ClientStore`
 * `getState`/`putState`/`listState`), so every client store that passes its conformance suite
 * holds crypto state too. `put` is atomic over its writes; `value: undefined` deletes.
 */
export interface CryptoStateStore {
  get(key: string): Promise<Uint8Array | undefined>;
  put(writes: Array<{ key: string; value: Uint8Array | undefined }>): Promise<void>;
  /** Entries whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<Array<{ key: string; value: Uint8Array }>>;
}

/** How a peer device's identity key compares with the one stored for it. */
export type IdentityStatus = 'new' | 'same' | 'changed';

/** The engine's hooks into identity handling; the adapter calls them, never decides policy. */
export interface IdentityHooks {
  /**
   * A peer device's identity key differs from the one stored for it (re-install, or an attack).
   * Called once per change, before the new key is trusted.
   */
  changed(peer: CryptoAddress, oldKey: Uint8Array, newKey: Uint8Array): void;
  /**
   * Whether to use this identity key for this peer now. The default policy answers true (accept
   * and warn); a "block until verified" policy answers false for an unverified changed key, and
   * the operation then fails with an {@link UntrustedIdentityError}.
   */
  trust(peer: CryptoAddress, key: Uint8Array, status: IdentityStatus): boolean | Promise<boolean>;
}

/** A peer's identity key is not trusted (see {@link IdentityHooks.trust}). */
export class UntrustedIdentityError extends Error {
  readonly code = 'untrusted_identity';
  constructor(readonly peer: CryptoAddress) {
    super(`identity key of ${peer.user}/${peer.device} is not trusted`);
    this.name = 'UntrustedIdentityError';
  }
}

/**
 * A decryption failed: no session, a broken or reset session, a missing sender key, a corrupt
 * or replayed message. The adapter's state is unchanged by the failure.
 */
export class DecryptError extends Error {
  readonly code = 'decrypt_failed';
  constructor(
    message: string,
    /** `duplicate`: a replay of a message already decrypted; `no_sender_key`: a group message from a sender whose key this device lacks; `other`: anything else. */
    readonly reason: 'duplicate' | 'no_sender_key' | 'no_session' | 'other' = 'other',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DecryptError';
  }
}

/**
 * End-to-end encryption for one device. The client engine owns one adapter per client; the
 * adapter owns the device's identity, prekeys, pairwise sessions and group sender keys, all in
 * the {@link CryptoStateStore} it is opened with.
 *
 * Rules every adapter keeps (the conformance suite in `postbox/testing` checks them):
 * - **Serialized per session.** Concurrent calls for the same peer device (and for the same
 *   group sender) run one after another: no message key is ever used twice and replay
 *   protection holds, whatever the caller's concurrency.
 * - **Failures change nothing.** A failed `decrypt`/`groupDecrypt` leaves sessions and sender
 *   keys as they were, so a later, valid message still decrypts.
 * - **Durable.** State survives a re-open over the same store (an app restart).
 * - A peer is a device: `encrypt` to a device without a session fails; the engine first calls
 *   `processBundle` with a bundle from the directory.
 */
export interface CryptoAdapter {
  /** For logs. */
  readonly name: string;
  /** True for an adapter that does not encrypt (the test-only plaintext adapter). */
  readonly insecure: boolean;
  /**
   * Loads this device's identity from `state`, creating and persisting one (identity key pair,
   * registration id) on first use. Called once per client before anything else.
   */
  open(state: CryptoStateStore, self: CryptoAddress, hooks: IdentityHooks): Promise<DeviceIdentity>;
  /**
   * Everything a first upload needs: the identity, a signed prekey, a last-resort Kyber key and
   * `count` one-time EC and Kyber keys each. Private halves are persisted before it resolves.
   */
  initialKeys(count: number): Promise<KeyUpload>;
  /** `count` new one-time EC and Kyber prekeys (identity and registration id included). */
  moreKeys(count: number): Promise<KeyUpload>;
  /**
   * A new signed prekey (and last-resort Kyber key). The previous ones stay usable for
   * sessions that were started with them until the next rotation.
   */
  rotateKeys(): Promise<KeyUpload>;
  /** Whether a session with this device exists. */
  hasSession(peer: CryptoAddress): Promise<boolean>;
  /**
   * Starts a session from a directory bundle. Returns how the bundle's identity compares with
   * the stored one (`hooks.changed` has been called for `changed`). Fails with an
   * {@link UntrustedIdentityError} when `hooks.trust` says no, and on a bad signature.
   */
  processBundle(bundle: KeyBundle): Promise<IdentityStatus>;
  /** Encrypts for one device (which must have a session). */
  encrypt(peer: CryptoAddress, plaintext: Uint8Array): Promise<Ciphertext>;
  /** Decrypts from one device; a `prekey` message starts the session. Fails with {@link DecryptError}. */
  decrypt(peer: CryptoAddress, ciphertext: Ciphertext): Promise<Uint8Array>;
  /** Drops the session with a device (stale, unlinked, or broken); the next send needs a bundle. */
  archiveSession(peer: CryptoAddress): Promise<void>;
  /**
   * This device's sender-key distribution message for `group` (created on first use): what each
   * member device needs, sent to it pairwise, to decrypt this device's group messages.
   */
  groupDistribution(group: string): Promise<Uint8Array>;
  /** Stores a member device's sender key for `group` from its distribution message. */
  processGroupDistribution(from: CryptoAddress, group: string, distribution: Uint8Array): Promise<void>;
  /** Encrypts once for every member device that has this device's sender key for `group`. */
  groupEncrypt(group: string, plaintext: Uint8Array): Promise<Uint8Array>;
  /** Decrypts a member device's group message. Fails with {@link DecryptError} (`no_sender_key` when its key is missing). */
  groupDecrypt(from: CryptoAddress, group: string, ciphertext: Uint8Array): Promise<Uint8Array>;
  /**
   * Starts a new sender key for `group` (after a member left or was removed): the next
   * `groupDistribution` returns the new key, and the old one is no longer used to encrypt.
   */
  rotateGroupKey(group: string): Promise<void>;
  /** The identity key stored for a peer device, if any. */
  peerIdentity(peer: CryptoAddress): Promise<Uint8Array | undefined>;
  /**
   * The safety number of this device and a peer device (60 digits, the same on both sides), for
   * users to compare out of band. Undefined when the peer's identity is not known yet.
   */
  safetyNumber(peer: CryptoAddress): Promise<string | undefined>;
}
