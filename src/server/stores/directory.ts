/**
 * The key-directory rules of the `ServerStore` contract that the built-in stores share, so
 * that they decide alike: which devices an end-to-end encrypted message must carry envelopes for
 * ("Device lists"), and what a key upload may do ("Key directory"). Pure functions: each store
 * reads its own state and writes its own rows around them.
 * What store-kit.ts re-exports from here is public (`postbox/server/store-kit`).
 * @packageDocumentation
 */
import type {
  AppendOutcome,
  DeviceAddress,
  DeviceEnvelope,
  DeviceMismatch,
  KeyUpload,
  MessageInput,
} from '../store.js';
import { addressKey as keyOf } from '../address.js';
import { isSender } from './relational.js';

/** A device that has keys in the directory, as the device-list check sees it. */
export interface KeyedDevice extends DeviceAddress {
  /** The device's current registration id. */
  rid: number;
}

/** An append item's refusal. */
export type Refusal = Extract<AppendOutcome, { ok: false }>;

/** What an accepted device list resolves to: the target devices and, in the same order, their bodies. */
export interface SealedTargets<T extends KeyedDevice> {
  targets: T[];
  bodies: Uint8Array[];
}

const address = (d: DeviceAddress): DeviceAddress => ({ user: d.user, device: d.device });

/**
 * Checks a message's `envelopes` against the directory (the "Device lists" rule) and resolves its
 * targets. `keyed(user)` lists the user's devices that have keys, in registration order. Expected
 * are every keyed device of `to`, then every keyed device of the sender's user, each once and
 * never the sending device (which already has what it sent, as for any message). An envelope for
 * a device that is not expected, or a second one for the same device, is `extra`; an expected
 * device without an envelope is `missing`; only a list without either is checked for stale
 * registration ids.
 */
export function checkDeviceList<T extends KeyedDevice>(
  item: MessageInput,
  envelopes: DeviceEnvelope[],
  keyed: (user: string) => readonly T[],
): SealedTargets<T> | Refusal {
  if (item.group) return { ok: false, code: 'forbidden' };
  const toDevices = keyed(item.to);
  if (toDevices.length === 0) return { ok: false, code: 'unknown_recipient' };
  const expected = new Map<string, T>();
  const mine = item.to === item.from.user ? [] : keyed(item.from.user);
  for (const d of [...toDevices, ...mine]) {
    if (isSender(d, item.from)) continue;
    expected.set(keyOf(d), d);
  }
  const given = new Map<string, DeviceEnvelope>();
  const extra: DeviceAddress[] = [];
  for (const e of envelopes) {
    const k = keyOf(e);
    if (!expected.has(k) || given.has(k)) extra.push(address(e));
    else given.set(k, e);
  }
  const missing: DeviceAddress[] = [];
  for (const [k, d] of expected) if (!given.has(k)) missing.push(address(d));
  if (missing.length > 0 || extra.length > 0) {
    const devices: DeviceMismatch = {};
    if (missing.length > 0) devices.missing = missing;
    if (extra.length > 0) devices.extra = extra;
    return { ok: false, code: 'mismatched_devices', devices };
  }
  const stale: DeviceAddress[] = [];
  const targets: T[] = [];
  const bodies: Uint8Array[] = [];
  for (const [k, d] of expected) {
    const e = given.get(k)!;
    if (e.rid !== d.rid) stale.push(address(d));
    targets.push(d);
    bodies.push(e.body);
  }
  if (stale.length > 0) return { ok: false, code: 'stale_devices', devices: { stale } };
  return { targets, bodies };
}

/**
 * What a key upload does to a device's directory record: `first` (none yet), `reinstall` (a new
 * identity key: the old one-time keys go first) or `update` (the same identity: rotation or
 * replenishment). A first upload and a re-install must carry a signed prekey and a last-resort
 * Kyber key, since the ones stored (if any) were signed by another identity key; otherwise this
 * throws and the store writes nothing.
 */
export function uploadKind(
  identityKey: Uint8Array | undefined,
  keys: KeyUpload,
  label: string,
): 'first' | 'reinstall' | 'update' {
  const kind =
    identityKey === undefined ? 'first' : sameBytes(identityKey, keys.identityKey) ? 'update' : 'reinstall';
  if (kind !== 'update' && (!keys.signedPreKey || !keys.lastResortKyber)) {
    throw new Error(
      `${label}: a device's first key upload, and one with a new identity key, must carry a signed prekey ` +
        'and a last-resort Kyber key',
    );
  }
  return kind;
}

/** The rejection of `ServerStore.putKeys` for a device that is not registered. */
export function notRegistered(label: string, device: DeviceAddress): Error {
  return new Error(
    `${label}: cannot publish keys of ${device.user}/${device.device}: register the device first`,
  );
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The users a `claimKeys` call names, as the stores claim them: each once, in the order first
 * named (asking for one user twice gets nothing a second bundle would not).
 */
export function claimedUsers(users: string | readonly string[]): string[] {
  return typeof users === 'string' ? [users] : [...new Set(users)];
}
