/**
 * The append rules of the `ServerStore` contract, written once for the three built-in stores:
 * which items are refused and why, which devices a message, read receipt or membership change goes
 * to, which of them a full inbox makes a message skip, who consents to whom by writing, and who
 * takes part in a group. A
 * store reads (`AppendReads`), asks the planner, and writes what the plan says with its own
 * statements, in its own lock order: the memory and SQLite stores plan and place one item at a
 * time inside their transaction; the PostgreSQL store plans a batch's items over the rows its
 * batch reads loaded and places them when it takes offsets (`postgres.ts`, "flush").
 *
 * It also holds the rule of the statuses a message entry leaving an inbox makes (`tellSender`:
 * `delivered` on an ack, `expired` on expiry). What is not here yet (docs/engines.md, "The append
 * planner"): which entries an ack or expiry removes, releasing bodies, and offsets are still each
 * store's own code.
 * What store-kit.ts re-exports from here is public (`postbox/server/store-kit`).
 * @packageDocumentation
 */
import type { AppendInput, DeviceAddress, MessageInput, ReceiptInput } from '../store.js';
import { inboxFits, placeItem, type InboxUsage, type StoreQuotas } from '../quotas.js';
import { checkDeviceList, type Refusal } from './directory.js';
import { exceptSender, isSender, queueStatus, type Groups } from './relational.js';

/**
 * What the planner reads of a store, synchronously: a store whose reads are asynchronous loads
 * them first (PostgreSQL's batch reads) and answers from what it loaded. `D` is the store's own
 * form of a device (a row with its id, or an address); the plan hands the same objects back.
 */
export interface AppendReads<D extends DeviceAddress> {
  /** The user's devices, in registration order (none: the user is unknown). */
  devices(user: string): readonly D[];
  /** The user's devices that have keys in the directory, with their registration ids, in registration order. */
  keyed(user: string): readonly (D & { rid: number })[];
  /** The group's current version when `user` is one of its members, else undefined. */
  memberVer(group: string, user: string): number | undefined;
  /** Every device of every member of the group, in the store's member order. */
  memberDevices(group: string): readonly D[];
}

/**
 * What planning a batch's messages and read receipts asks of {@link AppendReads}: which users'
 * devices, which users' keyed devices, and which groups (with the members whose membership is
 * asked). A store whose reads are asynchronous loads all of it first, in as few queries as its
 * backend allows, then answers the planner from what it loaded (as the PostgreSQL store does).
 * The answers must take the batch's own earlier items into account: after a membership change,
 * or a device registered in between, read again or update what was loaded. Group changes are not
 * listed: {@link planChange} takes the group as the store read it.
 */
export interface BatchReads {
  /** Users whose devices `devices(user)` is asked for. */
  devices: Set<string>;
  /** Users whose keyed devices `keyed(user)` is asked for (end-to-end encrypted messages). */
  keyed: Set<string>;
  /** Groups whose member devices `memberDevices(group)` is asked for, each with the users whose `memberVer(group, user)` is. */
  groups: Map<string, Set<string>>;
}

/** The reads planning `items` may ask for (see {@link BatchReads}); a superset, never less. */
export function batchReads(items: readonly AppendInput[]): BatchReads {
  const out: BatchReads = { devices: new Set(), keyed: new Set(), groups: new Map() };
  for (const item of items) {
    if (item.kind === 'group') continue;
    if (item.kind === 'msg' && item.group === true) {
      if (item.envelopes) continue; // refused (`forbidden`) before any read
      let members = out.groups.get(item.to);
      if (!members) out.groups.set(item.to, (members = new Set()));
      members.add(item.from.user);
      continue;
    }
    const asked = item.kind === 'msg' && item.envelopes ? out.keyed : out.devices;
    asked.add(item.to);
    asked.add(item.from.user);
  }
  return out;
}

/** A message the rules accept: where it goes and what writing it also records. */
export interface MessagePlan<D> {
  ok: true;
  /** The devices it goes to, before the inbox quotas are applied (see {@link placeMessage}). */
  targets: D[];
  /** For an end-to-end encrypted message, each target's own envelope, in the order of `targets`. */
  bodies?: Uint8Array[];
  /** For a group message, the group's version: its dedupe record keeps it, and its sender takes part at it. */
  ver: number | null;
  /** The sender consents to the recipient user by writing to it (the "Consent" rule): a 1:1 message to another user. */
  consent: boolean;
}

/** A read receipt the rules accept: the ids that count and, when any does, the devices their status goes to. */
export interface ReceiptPlan<D> {
  ok: true;
  /** The receipt's ids that count, in its order, each once. */
  ids: string[];
  /** None when no id counts: the receipt then writes nothing but its dedupe record. */
  targets: D[];
}

/** A device's address alone, without the store's own fields (for `notify`). */
export const addressOf = (d: DeviceAddress): DeviceAddress => ({ user: d.user, device: d.device });

/**
 * The devices a 1:1 message or read receipt goes to: every device of `to`, then the sender user's
 * devices, never the sending device (which has what it sent). A note to self lists its user once.
 */
export function directTargets<D extends DeviceAddress>(
  item: { from: DeviceAddress; to: string },
  toDevices: readonly D[],
  fromDevices: readonly D[],
): D[] {
  const targets = exceptSender(toDevices, item.from);
  if (item.to === item.from.user) return targets;
  for (const d of fromDevices) if (!isSender(d, item.from)) targets.push(d);
  return targets;
}

/**
 * Plans a message (the "Delivery", "Device lists" and "Groups" rules): an end-to-end encrypted one
 * must carry one envelope per keyed device of its recipient and of the sender's other devices (a
 * group's is refused: `forbidden`); a group message goes to every member device but the sender's,
 * and only a member may send one (`not_member`); a 1:1 message goes to every device of its
 * recipient and the sender's other devices, and a recipient without devices is `unknown_recipient`.
 */
export function planMessage<D extends DeviceAddress>(
  item: MessageInput,
  reads: AppendReads<D>,
): MessagePlan<D> | Refusal {
  const consent = item.group !== true && item.from.user !== item.to;
  if (item.envelopes) {
    const checked = checkDeviceList(item, item.envelopes, (user) => reads.keyed(user));
    if ('code' in checked) return checked;
    return { ok: true, targets: checked.targets, bodies: checked.bodies, ver: null, consent };
  }
  if (item.group) {
    const ver = reads.memberVer(item.to, item.from.user);
    if (ver === undefined) return { ok: false, code: 'not_member' };
    return { ok: true, targets: exceptSender(reads.memberDevices(item.to), item.from), ver, consent };
  }
  const toDevices = reads.devices(item.to);
  if (toDevices.length === 0) return { ok: false, code: 'unknown_recipient' };
  return {
    ok: true,
    targets: directTargets(item, toDevices, reads.devices(item.from.user)),
    ver: null,
    consent,
  };
}

/** A committed membership change's targets: each device and whether it gets the full form. */
export interface ChangeTargets<D> {
  targets: Array<{ device: D; full: boolean }>;
  /** How many targets get the full form (with a snapshot): a store keeps each form once, with its count. */
  full: number;
}

/**
 * Who a committed membership change goes to (the "Groups" rule): every device of every member after
 * it, in `members` order (the members it added get the full form, with the group's name and a
 * snapshot, to start from), then every device of each user it removed (the plain event: they learn
 * they are out). `members` are the group's member devices as the change left them.
 */
export function changeTargets<D extends DeviceAddress>(
  change: { joined: readonly string[]; removed: readonly string[] },
  members: readonly D[],
  devicesOf: (user: string) => readonly D[],
): ChangeTargets<D> {
  const isNew = new Set(change.joined);
  let full = 0;
  const targets = members.map((device) => {
    const f = isNew.has(device.user);
    if (f) full++;
    return { device, full: f };
  });
  for (const user of change.removed)
    for (const device of devicesOf(user)) targets.push({ device, full: false });
  return { targets, full };
}

/**
 * Plans a read receipt (the "Receipts" rule): a recipient without devices is `unknown_recipient`;
 * otherwise `counted()` gives the ids that count (see `receiptIds`; a batched store also leaves out
 * messages its batch commits after the receipt), and their `read` status goes where a 1:1 message
 * from the reader would.
 */
export function planReceipt<D extends DeviceAddress>(
  item: ReceiptInput,
  reads: Pick<AppendReads<D>, 'devices'>,
  counted: () => string[],
): ReceiptPlan<D> | Refusal {
  const toDevices = reads.devices(item.to);
  if (toDevices.length === 0) return { ok: false, code: 'unknown_recipient' };
  const ids = counted();
  const targets = ids.length === 0 ? [] : directTargets(item, toDevices, reads.devices(item.from.user));
  return { ok: true, ids, targets };
}

/** A planned message's targets under the inbox quotas: where it is written, and the full devices it skips. */
export interface Placement<D> {
  ok: true;
  targets: D[];
  /** The envelopes of `targets`, for an end-to-end encrypted message. */
  bodies?: Uint8Array[];
  /** Full devices it skips: each gets its one `inbox_full` notice extended instead. */
  skipped: D[];
}

/**
 * Applies the inbox quotas to a plan (see `placeItem`): `usage(d)` is the device's inbox usage as
 * the running transaction sees it (earlier items of its batch counted). A message in a sequence
 * skips full devices while a recipient device has room; anything else, a read receipt included
 * (its status has no body bytes), goes everywhere or is refused (`inbox_full`).
 */
export function placeMessage<D extends DeviceAddress>(
  quotas: StoreQuotas,
  item: MessageInput | ReceiptInput,
  plan: { targets: D[]; bodies?: Uint8Array[] | undefined },
  usage: (d: D) => InboxUsage,
): Placement<D> | Refusal {
  const { targets, bodies } = plan;
  const size = (i: number): number =>
    item.kind === 'receipt' ? 0 : (bodies ? bodies[i]! : item.body).byteLength;
  const placed = targets.map((d, i) => ({
    fits: inboxFits(quotas, usage(d), 1, size(i)),
    own: d.user === item.from.user,
  }));
  const skip = placeItem(placed, item.kind === 'msg' && item.seq > 0);
  if (skip === 'refused') return { ok: false, code: 'inbox_full' };
  if (skip.length === 0)
    return bodies ? { ok: true, targets, bodies, skipped: [] } : { ok: true, targets, skipped: [] };
  const skipped = new Set(skip);
  const kept = targets.filter((_, i) => !skipped.has(i));
  const out: Placement<D> = { ok: true, targets: kept, skipped: skip.map((i) => targets[i]!) };
  if (bodies) out.bodies = bodies.filter((_, i) => !skipped.has(i));
  return out;
}

/**
 * Whether a message entry of `owner`'s leaving its inbox may tell the sender user `from`: never
 * for the sender's own user (the copies its other devices get).
 */
export const tellsSender = (from: string, owner: string): boolean => from !== owner;

/**
 * The "Receipts" rule for a message entry leaving a recipient's inbox, acked (`delivered`) or
 * expired (`expired`): the first of a recipient user's entries of a message to go tells its sender
 * user, once per (message, recipient user), and the sender's own user's copies tell no one.
 * `first()` asks the store's record of who was told and records `owner`; it is asked only when the
 * entry may tell. The status joins `statuses`, one group per (sender, recipient) pair.
 */
export function tellSender(
  statuses: Groups,
  m: { from: string; id: string },
  owner: string,
  first: () => boolean,
): void {
  if (tellsSender(m.from, owner) && first()) queueStatus(statuses, m.from, owner, m.id);
}
