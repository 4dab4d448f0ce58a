/**
 * Key-directory stand-ins shared by the {@link ServerStore} conformance files: uploads whose
 * bytes say what they are, and bundles in words so that whole bundles compare at once.
 * @internal
 */
import type { DeviceAddress, KeyBundle, KeyUpload, ServerStore } from '../server/store.js';

const encoder = new TextEncoder();
/** A device in words: `user/device`. */
export const devKey = (d: DeviceAddress): string => `${d.user}/${d.device}`;

const decoder = new TextDecoder();
/** Stand-ins for key material and ciphertexts: bytes that say what they are. */
export const bytes = (label: string): Uint8Array => encoder.encode(label);
export const text = (b: Uint8Array): string => decoder.decode(b);

/** A registration id (1…16380) that differs between devices and between installs of one device. */
export function ridOf(d: DeviceAddress, gen: number): number {
  let h = 0;
  for (const c of `${devKey(d)}#${gen}`) h = (h * 31 + c.charCodeAt(0)) % 16_380;
  return h + 1;
}

/** A signed key `id` whose key and signature bytes name `label`. */
export const signed = (id: number, label: string) => ({
  id,
  key: bytes(label),
  signature: bytes(`signature of ${label}`),
});

/**
 * A key upload of install `gen` of device `d` (a re-install is the next `gen`: a new identity key
 * and registration id), with one-time EC keys `pre` and Kyber keys `kyber` in that order. `full`
 * (the default) adds the signed prekey (id 1) and the last-resort Kyber key (id 9000).
 */
export function upload(
  d: DeviceAddress,
  o: { gen?: number; pre?: number[]; kyber?: number[]; full?: boolean } = {},
): KeyUpload {
  const gen = o.gen ?? 1;
  const name = `${devKey(d)}#${gen}`;
  const keys: KeyUpload = {
    registrationId: ridOf(d, gen),
    identityKey: bytes(`identity ${name}`),
    preKeys: (o.pre ?? []).map((id) => ({ id, key: bytes(`pre ${id} ${name}`) })),
    kyberPreKeys: (o.kyber ?? []).map((id) => signed(id, `kyber ${id} ${name}`)),
  };
  if (o.full !== false) {
    keys.signedPreKey = signed(1, `signed ${name}`);
    keys.lastResortKyber = signed(9000, `last resort ${name}`);
  }
  return keys;
}

/** Gives each device a first upload: one-time EC keys 1, 2, 3 and Kyber keys 101, 102. */
export async function giveKeys(store: ServerStore, ...devices: DeviceAddress[]): Promise<void> {
  for (const d of devices) await store.putKeys(d, upload(d, { pre: [1, 2, 3], kyber: [101, 102] }));
}

/** What `keyCount` says of a device whose one-time keys ran out. */
export const noKeys = { preKeys: 0, kyberPreKeys: 0 };

/** A bundle in words, so that whole bundles compare at once. */
export function describeBundle(b: KeyBundle) {
  const key = (k: { id: number; key: Uint8Array }) => `${k.id}: ${text(k.key)}`;
  const sig = (k: { id: number; key: Uint8Array; signature: Uint8Array }) =>
    `${key(k)} (${text(k.signature)})`;
  return {
    device: devKey(b),
    rid: b.registrationId,
    identity: text(b.identityKey),
    signed: sig(b.signedPreKey),
    kyber: sig(b.kyberPreKey),
    pre: b.preKey ? key(b.preKey) : 'none',
  };
}

/**
 * The bundle install `gen` of `d` hands out with one-time EC key `pre` (or none) and one-time
 * Kyber key `kyber` (or the last-resort one), as {@link describeBundle} words it.
 */
export function bundleOf(d: DeviceAddress, gen: number, pre: number | undefined, kyber: number | undefined) {
  const name = `${devKey(d)}#${gen}`;
  const kyberLabel = kyber === undefined ? `last resort ${name}` : `kyber ${kyber} ${name}`;
  return {
    device: devKey(d),
    rid: ridOf(d, gen),
    identity: `identity ${name}`,
    signed: `1: signed ${name} (signature of signed ${name})`,
    kyber: `${kyber ?? 9000}: ${kyberLabel} (signature of ${kyberLabel})`,
    pre: pre === undefined ? 'none' : `${pre}: pre ${pre} ${name}`,
  };
}
