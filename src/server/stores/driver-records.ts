/**
 * The records a {@link driverStore} hands out are copies: a key bundle claimed from the
 * directory, an entry's group event and gap streams. A caller changing what it got changes
 * nothing stored.
 * @internal
 * @packageDocumentation
 */
import type { GapStream, GroupEvent, KeyBundle } from '../store.js';
import type { DriverKeys, DriverPreKey, DriverSignedKey } from './driver.js';

export const copyKey = (k: DriverPreKey): DriverPreKey => ({ id: k.id, key: new Uint8Array(k.key) });
export const copySigned = (k: DriverSignedKey): DriverSignedKey => ({
  id: k.id,
  key: new Uint8Array(k.key),
  signature: new Uint8Array(k.signature),
});
export const copyStreams = (streams: GapStream[]): GapStream[] =>
  streams.map((g) => ({ ...g, from: { ...g.from }, ranges: g.ranges.map(([a, b]) => [a, b]) }));
export function copyEvent(e: GroupEvent): GroupEvent {
  const out: GroupEvent = { ...e, members: [...e.members] };
  if (e.snapshot) out.snapshot = e.snapshot.map((m) => ({ ...m }));
  return out;
}

/** One device's bundle, taking its oldest one-time keys (when `oneTime`) out of `k`. */
export function claimOne(user: string, device: string, k: DriverKeys, oneTime: boolean): KeyBundle {
  const pre = oneTime ? (k.preKeys.values().next().value as DriverPreKey | undefined) : undefined;
  if (pre) k.preKeys.delete(pre.id);
  const kyber = oneTime ? (k.kyberPreKeys.values().next().value as DriverSignedKey | undefined) : undefined;
  if (kyber) k.kyberPreKeys.delete(kyber.id);
  const bundle: KeyBundle = {
    user,
    device,
    registrationId: k.registrationId,
    identityKey: new Uint8Array(k.identityKey),
    signedPreKey: copySigned(k.signedPreKey),
    kyberPreKey: copySigned(kyber ?? k.lastResortKyber),
  };
  if (pre) bundle.preKey = copyKey(pre);
  return bundle;
}
