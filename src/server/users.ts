/**
 * The user directory's one reserved name: the device id of a pending inbox (see
 * `ServerStore` "User directory"). Shared by the engine, which never rings it, and the
 * stores, which keep it as an ordinary device of a user who has no real one.
 * @packageDocumentation
 */

/**
 * The device id under which a store keeps the pending inbox of a registered user who has no
 * device yet (see `ServerStore.registerUser`). No device can ever have this id: `#` is not
 * an id character (src/protocol/ids.ts), so every path that validates ids (frames, the
 * `authenticate` hook's answer, server APIs) keeps real devices from posing as it.
 *
 * `ServerStore.devices` never lists it, but `notify` lists may (an entry waits there), and
 * `readInbox` reads it, so an admin or a test can see what waits.
 */
export const PENDING_DEVICE = '#pending';

/** Whether `device` names a pending inbox rather than a device. */
export const isPendingDevice = (device: string): boolean => device === PENDING_DEVICE;

/** A user's device ids without its pending inbox (what `ServerStore.devices` answers). */
export const realDevices = (devices: readonly string[]): string[] =>
  devices.filter((d) => !isPendingDevice(d));

/** The rejection of `ServerStore.registerDevice` for the reserved id: a pending inbox is made by `registerUser`. */
export function assertNotPending(label: string, device: { user: string; device: string }): void {
  if (isPendingDevice(device.device)) {
    throw new Error(
      `${label}: ${PENDING_DEVICE} is reserved for pending inboxes; call registerUser(${device.user})`,
    );
  }
}
