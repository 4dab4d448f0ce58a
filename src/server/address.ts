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
