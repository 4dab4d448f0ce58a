/**
 * What every cluster adapter keeps on its own node: handlers, the devices it registered and the
 * users it watches. Both are bounded by the node's sessions.
 * @internal
 */
import { addressKey } from '../address.js';
import type {
  ClusterAdapter,
  DeviceAddress,
  DoorbellEntry,
  PresenceEvent,
  TypingNotice,
  Unsubscribe,
} from './types.js';

/**
 * A device's identity as the cluster stores it (its Redis key suffix, the members of the registry's
 * sets, the take-over and close messages): JSON, unambiguous for any ids, and the same on nodes of
 * two versions. Inside one process, maps use `addressKey` (address.ts).
 */
export const clusterDeviceKey = (d: DeviceAddress): string => JSON.stringify([d.user, d.device]);

/** The entries of a ring that are for `devices` (one node's share), or undefined when none are. */
export function entriesFor(
  entries: DoorbellEntry[] | undefined,
  devices: DeviceAddress[],
): DoorbellEntry[] | undefined {
  if (!entries?.length) return undefined;
  const keys = new Set(devices.map(addressKey));
  const out = entries.filter((e) => keys.has(addressKey(e.device)));
  return out.length > 0 ? out : undefined;
}

/** A ring's carried entries by device (`addressKey`), each device's in order; undefined when none. */
export function entriesByDevice(
  entries: readonly DoorbellEntry[] | undefined,
): Map<string, DoorbellEntry[]> | undefined {
  let out: Map<string, DoorbellEntry[]> | undefined;
  for (const e of entries ?? []) {
    const k = addressKey(e.device);
    const mine = (out ??= new Map()).get(k);
    if (mine) mine.push(e);
    else out.set(k, [e]);
  }
  return out;
}

/** A random suffix that makes a node incarnation unique. */
export function incarnationToken(): string {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** A list of handlers; a throwing handler is dropped from that one call, not from the list. */
class Handlers<A extends unknown[]> {
  private readonly list = new Set<(...args: A) => void>();
  add(h: (...args: A) => void): Unsubscribe {
    const wrapped = (...args: A) => h(...args);
    this.list.add(wrapped);
    return () => void this.list.delete(wrapped);
  }
  emit(...args: A): void {
    for (const h of this.list) {
      try {
        h(...args);
      } catch {
        // A handler's bug must not stop delivery to the others (see ClusterAdapter).
      }
    }
  }
}

/** The per-node state and handler plumbing shared by the adapters. @internal */
export class NodeCore {
  readonly doorbell = new Handlers<[DeviceAddress[], (DoorbellEntry[] | undefined)?]>();
  readonly replaced = new Handlers<[DeviceAddress[]]>();
  readonly presence = new Handlers<[PresenceEvent]>();
  readonly typing = new Handlers<[string[], TypingNotice]>();
  readonly closed = new Handlers<[DeviceAddress[], number]>();
  readonly linkApproved = new Handlers<[string]>();
  /** Devices registered by this node (so it can re-register them after losing its liveness). */
  readonly local = new Map<string, DeviceAddress>();
  /** Watched user → number of `watch` calls not yet undone. */
  readonly watched = new Map<string, number>();

  /** Counts one watch; true when it is the user's first (subscribe now). */
  watch(user: string): boolean {
    const n = this.watched.get(user) ?? 0;
    this.watched.set(user, n + 1);
    return n === 0;
  }

  /** Undoes one watch; true when it was the user's last (unsubscribe now). */
  unwatch(user: string): boolean {
    const n = this.watched.get(user);
    if (n === undefined) return false;
    if (n > 1) {
      this.watched.set(user, n - 1);
      return false;
    }
    this.watched.delete(user);
    return true;
  }

  /**
   * Unregisters every device this node still holds and announces the users who left with it
   * (a clean stop needs no debounce: the node is going away).
   */
  async leave(adapter: ClusterAdapter, now: number): Promise<void> {
    for (const d of [...this.local.values()]) {
      const r = await adapter.unregister(d);
      if (r.wentOffline) await adapter.publishPresence({ user: d.user, online: false, v: r.v, at: now });
    }
  }

  /**
   * Delivers a `lost` event this node published by reaping, when it does not watch the user
   * (watched users' events arrive the usual way): its engine records the user's last seen.
   */
  deliverReaped(e: PresenceEvent): void {
    if (!this.watched.has(e.user)) this.presence.emit(e);
  }

  /** Delivers a presence event if this node watches its user. */
  deliverPresence(e: PresenceEvent): void {
    if (this.watched.has(e.user)) this.presence.emit(e);
  }
}
