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
   * message skips a device it would take past it (the device gets an `inbox_full` gap notice
   * instead) and is refused with `inbox_full` (retryable) only when none of its recipient devices
   * has room; a read receipt (or a control message, in no sequence) that would take any device
   * past it is refused as a whole (see {@link placeItem}). Entries the server makes itself
   * (delivered/expired statuses, group events, snapshots, gap notices) are never refused, but
   * count. @default 20000
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
 * The refusal of a key upload past {@link StoreQuotas.preKeys}: the store rejects `putKeys` with
 * it, and the server answers the `keys` frame with its code.
 */
export function preKeyQuotaError(label: string, max: number): PostboxError {
  return new PostboxError(
    'quota_exceeded',
    `${label}: the upload would leave the device more than ${max} one-time keys of a kind; upload fewer`,
  );
}

/**
 * The start of the fixed window of `windowMs` that holds `now`, for
 * {@link ServerStore.countActions}: windows start at whole multiples of `windowMs`, so every
 * node agrees which one a count falls in.
 */
export function actionWindow(now: number, windowMs: number): number {
  return now - (now % windowMs);
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

/** One target device of a client item, as {@link placeItem} sees it. */
export interface ItemTarget {
  /** Its inbox can take the item's entry within the quotas. */
  fits: boolean;
  /** It is a device of the sender's own user (the sender's other devices). */
  own: boolean;
}

/**
 * Where a client item goes under the inbox quotas (docs/security.md, "A full member does not
 * silence a group"). A message in a sequence (`partial`: seq > 0) goes to every target device with
 * room and skips the full ones (each gets an `inbox_full` gap notice instead); it is refused only
 * when none of its recipient devices has room: the targets outside the sender's user, or, when
 * there are none (a note to self), all of them. Anything else (a read receipt, a control message
 * in no sequence: there is no number to name in a notice) goes to every target or is refused.
 * Returns the indexes of the targets to skip, or `'refused'`.
 */
export function placeItem(targets: readonly ItemTarget[], partial: boolean): number[] | 'refused' {
  const full: number[] = [];
  targets.forEach((t, i) => t.fits || full.push(i));
  if (full.length === 0) return full;
  if (!partial) return 'refused';
  const others = targets.filter((t) => !t.own);
  const recipients = others.length > 0 ? others : targets;
  return recipients.some((t) => t.fits) ? full : 'refused';
}

/** An inbox entry a transaction is about to insert, as the quota check sees it. */
export interface PlannedEntry {
  dev: number;
  /** Body bytes it counts for. */
  size: number;
  /** The batch index of the client item it belongs to; undefined for server-made entries. */
  item?: number | undefined;
  /** The item may skip full devices ({@link placeItem}'s `partial`). */
  partial?: boolean | undefined;
  /** Its device is one of the sender's own user. */
  own?: boolean | undefined;
}

/**
 * Places the client items of a transaction, given `usage` (each device's usage as locked at the
 * end of the transaction): server-made entries always count; then each item, in batch order, is
 * placed by {@link placeItem} (an item has at most one entry per device). So the outcome is the
 * one of applying the items one by one against the locked usage. Returns the items refused (they
 * count for nothing) and the entries of placed items to skip (their devices are full).
 */
export function planInboxes<E extends PlannedEntry>(
  q: StoreQuotas,
  entries: readonly E[],
  usage: Map<number, InboxUsage>,
): { refused: Set<number>; skipped: Set<E> } {
  const refused = new Set<number>();
  const skipped = new Set<E>();
  const byItem = new Map<number, E[]>();
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
    const targets = list.map((e) => ({ fits: inboxFits(q, at(e.dev), 1, e.size), own: e.own === true }));
    const skip = placeItem(targets, list[0]!.partial === true);
    if (skip === 'refused') {
      refused.add(item);
      continue;
    }
    for (const i of skip) skipped.add(list[i]!);
    list.forEach((e, i) => {
      if (skip.includes(i)) return;
      const u = at(e.dev);
      u.entries++;
      u.bytes += e.size;
    });
  }
  return { refused, skipped };
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
