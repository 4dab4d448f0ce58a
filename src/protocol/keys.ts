/**
 * The public key material of end-to-end encryption as it travels through the server's key
 * directory (the `keys` and `kb` frames carry it in their compact form): what a device publishes
 * and what a claim hands out. Part of the wire contract, so the server's store and the client's
 * crypto adapter both speak of it from here; `postbox/crypto` re-exports it.
 * @packageDocumentation
 */

/** A one-time elliptic-curve prekey as published. */
export interface PublicPreKey {
  id: number;
  /** Serialized public key. */
  key: Uint8Array;
}

/** A prekey signed by the device's identity key (the signed prekey, Kyber prekeys). */
export interface SignedPublicKey extends PublicPreKey {
  signature: Uint8Array;
}

/**
 * What a device publishes to the server's key directory. The first upload carries everything;
 * a replenishment carries only new one-time keys; a rotation carries a new signed prekey (and
 * may carry a new last-resort Kyber key).
 */
export interface KeyUpload {
  /** The device's registration id (1…16380): a re-installed device gets a new one. */
  registrationId: number;
  /** Serialized identity public key. */
  identityKey: Uint8Array;
  signedPreKey?: SignedPublicKey;
  /** The Kyber prekey handed out when the one-time Kyber keys are used up (reusable). */
  lastResortKyber?: SignedPublicKey;
  /** One-time EC prekeys to add. */
  preKeys?: PublicPreKey[];
  /** One-time Kyber prekeys to add. */
  kyberPreKeys?: SignedPublicKey[];
}

/**
 * What the directory hands out for one device: its one-time keys are claimed (never handed out
 * twice). `preKey` is absent when the device's one-time EC keys ran out; `kyberPreKey` is then
 * a one-time Kyber key or, when those ran out, the last-resort one.
 */
export interface KeyBundle {
  user: string;
  device: string;
  registrationId: number;
  identityKey: Uint8Array;
  signedPreKey: SignedPublicKey;
  kyberPreKey: SignedPublicKey;
  preKey?: PublicPreKey;
}
