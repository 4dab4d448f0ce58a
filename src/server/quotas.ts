/**
 * Storage quotas: how much of the store one device or user may hold. Every built-in store
 * (memory, SQLite, PostgreSQL) enforces them in the same transaction as the write they limit, so
 * no interleaving of writers (connections, gateway nodes) gets past them, and the store, not the
 * engine's memory, is what they are counted in: they hold across reconnects, restarts and nodes.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/errors.js';

/** The quotas a store enforces (see docs/security.md, "Storage quotas"). */
export interface StoreQuotas {
  /**
   * Entries one device's inbox may hold (messages, statuses, group events not yet acked). A
   * message or read receipt that would take any of its recipient devices past it is refused as a
   * whole with `inbox_full` (retryable: the sender may try again once the device drained it).
   * Entries the server makes itself (delivered/expired statuses, group events, snapshots) are
   * never refused, but count. @default 20000
   */
  inboxEntries: number;
  /**
   * Message body bytes one device's inbox may hold (a body stored once for many devices counts
   * for each, as each must download it); refused as {@link StoreQuotas.inboxEntries}.
   * @default 64 MiB
   */
  inboxBytes: number;
  /**
   * Unclaimed one-time prekeys of each kind (EC, Kyber) one device may have in the key directory.
   * An upload that would pass it is refused as a whole with `quota_exceeded`. @default 1000
   */
  preKeys: number;
  /**
   * Groups one user may be a member of. A create, add or accepted invite that would take a user
   * past it is refused as a whole with `quota_exceeded`. @default 1000
   */
  groupsPerUser: number;
  /**
   * Pending group invites one user may hold (see docs/groups.md, "Consent"); an invite past it is
   * refused with `quota_exceeded`. @default 256
   */
  invitesPerUser: number;
}

/** The quotas a store uses when its options do not say. */
export const DEFAULT_QUOTAS: Readonly<StoreQuotas> = Object.freeze({
  inboxEntries: 20_000,
  inboxBytes: 64 * 1024 * 1024,
  preKeys: 1000,
  groupsPerUser: 1000,
  invitesPerUser: 256,
});

/**
 * The quotas a store runs with: the defaults, overridden by `given`; each must be a positive
 * integer (a store without a quota is what a very large one gives).
 */
export function resolveQuotas(given: Partial<StoreQuotas> | undefined, label: string): StoreQuotas {
  const out: StoreQuotas = { ...DEFAULT_QUOTAS, ...given };
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new RangeError(`${label}: quotas.${k} must be a positive integer, got ${String(v)}`);
    }
  }
  return out;
}

/** A device's inbox usage: entries and message body bytes. */
export interface InboxUsage {
  entries: number;
  bytes: number;
}

/**
 * Whether adding `entries` entries of `bytes` body bytes to an inbox with `usage` stays within the
 * quotas.
 */
export function inboxFits(q: StoreQuotas, usage: InboxUsage, entries: number, bytes: number): boolean {
  return usage.entries + entries <= q.inboxEntries && usage.bytes + bytes <= q.inboxBytes;
}

/**
 * Tracks the inbox usage a transaction adds on top of what it read, so that a batch with many
 * items to one device is checked against all of them.
 */
export class UsageTally {
  private readonly added = new Map<number | string, InboxUsage>();

  /** What `dev` holds now: `base` (as read in this transaction) plus what this transaction added. */
  usage(dev: number | string, base: InboxUsage): InboxUsage {
    const a = this.added.get(dev);
    return a ? { entries: base.entries + a.entries, bytes: base.bytes + a.bytes } : base;
  }

  /** Records `entries` entries of `bytes` bytes added to `dev`. */
  add(dev: number | string, entries: number, bytes: number): void {
    const a = this.added.get(dev);
    if (a) {
      a.entries += entries;
      a.bytes += bytes;
    } else this.added.set(dev, { entries, bytes });
  }

  /** Every device this transaction added to, with what it added. */
  entries(): IterableIterator<[number | string, InboxUsage]> {
    return this.added.entries();
  }
}

/**
 * The refusal of a key upload past {@link StoreQuotas.preKeys}: the store rejects `putKeys` with
 * it, and the server answers the `keys` frame with its code.
 */
export function preKeyQuotaError(label: string, max: number): PostboxError {
  return new PostboxError(
    'quota_exceeded',
    `${label}: the upload would leave the device more than ${max} one-time keys of a kind; upload fewer`,
  );
}

/** The first of `users` that already holds `count(user) >= max` groups, or undefined. */
export function overGroupQuota(
  users: readonly string[],
  count: (user: string) => number,
  max: number,
): string | undefined {
  return users.find((u) => count(u) >= max);
}

/**
 * How many one-time keys of a kind a device has after an upload: those it keeps (`have`, none
 * after a re-install) plus the uploaded ids it did not have (a re-uploaded id replaces its key).
 */
export function keysAfter(
  have: ReadonlyMap<number, unknown> | undefined,
  upload: ReadonlyArray<{ id: number }> | undefined,
): number {
  const added = new Set<number>();
  for (const k of upload ?? []) if (!have?.has(k.id)) added.add(k.id);
  return (have?.size ?? 0) + added.size;
}

/** An inbox entry a transaction is about to insert, as the quota check sees it. */
export interface PlannedEntry {
  dev: number;
  /** Body bytes it counts for. */
  size: number;
  /** The batch index of the client item it belongs to; undefined for server-made entries. */
  item?: number | undefined;
}

/**
 * The client items of a transaction that do not fit their inboxes, given `usage` (each device's
 * usage as locked at the end of the transaction): server-made entries always count; then each
 * item, in batch order, fits as a whole (every one of its entries) or is refused and counts for
 * nothing. So the outcome is the one of applying the items one by one against the locked usage.
 */
export function itemsOverQuota(
  q: StoreQuotas,
  entries: readonly PlannedEntry[],
  usage: Map<number, InboxUsage>,
): Set<number> {
  const over = new Set<number>();
  const byItem = new Map<number, PlannedEntry[]>();
  const at = (dev: number): InboxUsage => {
    let u = usage.get(dev);
    if (!u) usage.set(dev, (u = { entries: 0, bytes: 0 }));
    return u;
  };
  for (const e of entries) {
    if (e.item === undefined) {
      const u = at(e.dev);
      u.entries++;
      u.bytes += e.size;
    } else {
      let list = byItem.get(e.item);
      if (!list) byItem.set(e.item, (list = []));
      list.push(e);
    }
  }
  for (const [item, list] of [...byItem].sort((a, b) => a[0] - b[0])) {
    const tally = new UsageTally();
    for (const e of list) tally.add(e.dev, 1, e.size);
    const fits = [...tally.entries()].every(([dev, add]) =>
      inboxFits(q, at(dev as number), add.entries, add.bytes),
    );
    if (!fits) {
      over.add(item);
      continue;
    }
    for (const [dev, add] of tally.entries()) {
      const u = at(dev as number);
      u.entries += add.entries;
      u.bytes += add.bytes;
    }
  }
  return over;
}

/**
 * Thrown inside a store transaction when client items turned out, under the inbox locks, not to
 * fit their quotas: the transaction rolls back and runs again with those items refused.
 * @internal
 */
export class OverQuota extends Error {
  constructor(readonly items: Set<number>) {
    super('inbox quota exceeded; retrying without the items over it');
  }
}
