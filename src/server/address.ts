/**
 * The address of one device of one user: the leaf type the store, push and cluster contracts all
 * speak of, kept in its own file so none of them imports another for it.
 * @packageDocumentation
 */

/** A user's device. */
export interface DeviceAddress {
  user: string;
  device: string;
}

/**
 * A device as one string, for the maps and sets of one process (sessions, budgets, a batch's
 * entries per device, the stores' indexes): length-prefixed, so no two addresses share a key
 * whatever their ids hold, and cheaper than JSON. The one in-process form; the cluster keeps its
 * own JSON form for what Redis stores (`clusterDeviceKey`), which nodes of two versions share.
 */
export const deviceKeyOf = (user: string, device: string): string => `${user.length}:${user}${device}`;

/** {@link deviceKeyOf} of an address. */
export const addressKey = (d: DeviceAddress): string => deviceKeyOf(d.user, d.device);
