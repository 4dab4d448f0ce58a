/**
 * Ids entering the server engine other than by frames (which their schemas check): what the app's
 * `authenticate` hook returns and the arguments of server APIs. The hook is app code and may pass
 * on whatever its credentials said; the engine trusts none of it unchecked, because a user id
 * with a `#` would pose as a group and one with a control character would break every key built
 * from ids.
 * @internal
 */
import { assertDeviceId, assertGroupId, assertUserId, isDeviceId, isUserId } from '../protocol/ids.js';
import type { DeviceAddress, GroupChange } from './store.js';

/** A hook's answer the engine can open a session for. */
export interface AcceptedAuth {
  addr: DeviceAddress;
  /** When the session must end (ms since the epoch), if the credentials expire. */
  expiresAt?: number;
}

/**
 * The session a hook's answer grants, or why it is refused: not an object, an invalid user or
 * device id, an expiry that is not a number, or one already past at `now`.
 */
export function acceptAuth(auth: unknown, now: number): AcceptedAuth | { refused: string } {
  if (typeof auth !== 'object' || auth === null) return { refused: 'credentials rejected' };
  const { user, device, expiresAt } = auth as { user?: unknown; device?: unknown; expiresAt?: unknown };
  if (!isUserId(user) || !isDeviceId(device)) return { refused: 'invalid user or device id' };
  const out: AcceptedAuth = { addr: { user: user as string, device: device as string } };
  if (expiresAt === undefined) return out;
  if (typeof expiresAt !== 'number' || Number.isNaN(expiresAt)) return { refused: 'invalid expiry' };
  if (expiresAt <= now) return { refused: 'credentials expired' };
  out.expiresAt = expiresAt;
  return out;
}

/** Throws `invalid_frame` unless both ids of `addr` are valid. */
export function assertAddress(addr: DeviceAddress): void {
  assertUserId(addr?.user, 'user');
  assertDeviceId(addr.device, 'device');
}

/** Throws `invalid_frame` unless the actor, the group and every member named are valid ids. */
export function assertGroupChange(actor: DeviceAddress, group: string, change: GroupChange): void {
  assertAddress(actor);
  assertGroupId(group, 'group');
  if ('members' in change) for (const m of change.members) assertUserId(m, 'member');
}
