/**
 * The append half of {@link driverStore}: one item of a batch (a message, a read receipt, a group
 * change) decided by the planner and written through a {@link StoreDriver}. The item's dedupe
 * record, body, entries and records go in the caller's atomic unit.
 * @internal
 * @packageDocumentation
 */
import type {
  AppendInput,
  AppendOutcome,
  DeviceAddress,
  GroupEvent,
  GroupInput,
  MessageInput,
} from '../store.js';
import type { StoreQuotas } from '../quotas.js';
import { overGroupQuota } from '../quotas.js';
import type { DriverEntry, DriverGroup, DriverInbox, StoreDriver } from './driver.js';
import {
  addressOf,
  changeTargets,
  placeMessage,
  planMessage,
  planReceipt,
  type AppendReads,
} from './planner.js';
import {
  membershipMarks,
  NotifySet,
  planChange,
  receiptIds,
  snapshotOf,
  type ChangePlan,
} from './relational.js';
import { planInvites, type InvitePlan, type PendingInvites } from './invites.js';
import { extendFullNotices, type DroppedMessage } from './gap-notices.js';
import type { GapStream } from '../store.js';

/** Length-prefixed, so no two (device, id) pairs share a key. */
export const dedupeKey = (from: DeviceAddress, id: string): string =>
  `${from.user.length}:${from.user}${from.device.length}:${from.device}${id}`;
/** An ordered pair: `(a, b)` and `(b, a)` differ. */
export const orderedKey = (a: string, b: string): string => `${a.length}:${a}${b}`;
const EMPTY = new Uint8Array(0);

/** Puts an entry at the inbox's next offset, counting it in the head (saved by the caller). */
export function putNext(inbox: DriverInbox, entry: DriverEntry): number {
  const h = inbox.head;
  const offset = ++h.last;
  h.count++;
  if (entry.kind === 'msg') h.bytes += entry.size;
  inbox.put(offset, entry);
  return offset;
}

/**
 * Stores a group event once under `key` and puts an entry pointing at it in each device's inbox,
 * noting each device in `notify`.
 */
export function pushEvent(
  d: StoreDriver,
  devices: readonly DeviceAddress[],
  key: string,
  event: GroupEvent,
  now: number,
  notify?: NotifySet,
): void {
  if (devices.length === 0) return;
  d.events.set(key, { ts: now, event });
  for (const device of devices) {
    push(d, device, { kind: 'group', ts: now, event: key });
    notify?.add(device);
  }
}

/** Deletes the inbox's entry `e` at `offset`, counting it out of the head (saved by the caller). */
export function takeAt(inbox: DriverInbox, offset: number, e: DriverEntry): void {
  inbox.delete(offset);
  inbox.head.count--;
  if (e.kind === 'msg') inbox.head.bytes -= e.size;
}

/** Appends one entry to a device's inbox; returns its offset. */
export function push(d: StoreDriver, device: DeviceAddress, entry: DriverEntry): number {
  const inbox = d.inbox(device, true);
  const offset = putNext(inbox, entry);
  inbox.save();
  return offset;
}

/** A user's device ids, in registration order. */
export const devicesOf = (d: StoreDriver, user: string): string[] => d.devices.get(user) ?? [];

/** Every device of every member of a group, in member then registration order. */
export function memberDevices(d: StoreDriver, g: DriverGroup): DeviceAddress[] {
  const out: DeviceAddress[] = [];
  for (const user of g.members.keys()) {
    for (const device of devicesOf(d, user)) out.push({ user, device });
  }
  return out;
}

/** Commits append items through a driver: `commit` is one item, inside the caller's unit. */
export function appender(
  d: StoreDriver,
  quotas: StoreQuotas,
): (item: AppendInput, now: number) => AppendOutcome {
  const usageOf = (device: DeviceAddress) => {
    const h = d.inbox(device)?.head;
    return { entries: h?.count ?? 0, bytes: h?.bytes ?? 0 };
  };

  /** What the append planner reads (planner.ts). */
  const reads: AppendReads<DeviceAddress> = {
    devices: (user) => devicesOf(d, user).map((device) => ({ user, device })),
    keyed(user) {
      const out: (DeviceAddress & { rid: number })[] = [];
      for (const device of devicesOf(d, user)) {
        const k = d.keys.get({ user, device });
        if (k) out.push({ user, device, rid: k.registrationId });
      }
      return out;
    },
    memberVer(group, user) {
      const g = d.groups.get(group);
      return g?.members.has(user) ? g.ver : undefined;
    },
    memberDevices(group) {
      const g = d.groups.get(group);
      return g ? memberDevices(d, g) : [];
    },
  };

  /** A full device skipped by a message: its one `inbox_full` notice now names it too. */
  function noteSkipped(device: DeviceAddress, m: DroppedMessage, now: number): void {
    const inbox = d.inbox(device, true);
    const held: GapStream[][] = [];
    for (const o of inbox.head.full ?? []) {
      const e = inbox.get(o);
      if (e?.kind !== 'gap' || e.reason !== 'inbox_full') continue;
      held.push(e.streams);
      takeAt(inbox, o, e);
    }
    inbox.head.full = extendFullNotices(held, [m]).map((streams) =>
      putNext(inbox, { kind: 'gap', ts: now, reason: 'inbox_full', streams }),
    );
    inbox.save();
  }

  function commitMessage(item: MessageInput, key: string, now: number): AppendOutcome {
    const plan = planMessage(item, reads);
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageOf);
    if (!placed.ok) return placed;
    const { targets, bodies, skipped } = placed;
    const { ver } = plan;
    if (plan.consent) d.consents.set(orderedKey(item.to, item.from.user), true);
    if (ver !== null) {
      const g = d.groups.get(item.to)!;
      g.acted.set(item.from.user, ver);
      d.groups.set(item.to, g);
    }
    d.dedupe.set(key, now);
    const sk = orderedKey(item.from.user, item.id);
    const records = d.sent.get(sk) ?? [];
    records.push({ id: item.id, to: item.to, ver, ts: now });
    d.sent.set(sk, records);
    if (targets.length > 0) {
      d.messages.set(key, {
        from: { user: item.from.user, device: item.from.device },
        id: item.id,
        to: item.to,
        group: item.group === true,
        seq: item.seq,
        ts: now,
        body: bodies ? EMPTY : new Uint8Array(item.body),
        refs: targets.length,
        told: new Set(),
      });
    }
    const offsets = targets.map((t, i) => {
      const body = bodies?.[i];
      return push(
        d,
        t,
        body
          ? { kind: 'msg', ts: now, message: key, body: new Uint8Array(body), size: body.byteLength }
          : { kind: 'msg', ts: now, message: key, size: item.body.byteLength },
      );
    });
    // Keyed devices (an end-to-end encrypted message's) carry their registration ids: addresses only.
    const notify = bodies ? targets.map(addressOf) : targets;
    if (skipped.length === 0) return { ok: true, ts: now, duplicate: false, notify, offsets };
    const stream = { from: item.from, to: item.to, group: item.group === true, seq: item.seq };
    for (const s of skipped) noteSkipped(s, stream, now);
    return { ok: true, ts: now, duplicate: false, notify: [...notify, ...skipped.map(addressOf)] };
  }

  function joinGroup(id: string, user: string): void {
    const set = d.userGroups.get(user) ?? new Set<string>();
    set.add(id);
    d.userGroups.set(user, set);
  }

  function leaveGroup(id: string, user: string): void {
    const set = d.userGroups.get(user);
    if (!set?.delete(id)) return;
    d.userGroups.set(user, set);
  }

  /** Applies a planned membership change (see `planChange`) to the group and the member index. */
  function applyChange(item: GroupInput, plan: ChangePlan, old: DriverGroup | undefined): DriverGroup {
    const group: DriverGroup = { ...plan.after, since: new Map(old?.since), acted: new Map(old?.acted) };
    const marks = membershipMarks(item, plan);
    for (const u of plan.removed) {
      group.since.delete(u);
      group.acted.delete(u);
    }
    for (const u of marks.joined) group.since.set(u, marks.ver);
    if (marks.acted !== undefined) group.acted.set(marks.acted, marks.ver);
    d.groups.set(item.group, group);
    for (const u of plan.joined) joinGroup(item.group, u);
    for (const u of plan.removed) leaveGroup(item.group, u);
    return group;
  }

  /** The pending invites of one group, as `planInvites` asks about them. */
  function pendingInvites(group: string): PendingInvites {
    return {
      has: (user) => d.invites.get(group)?.has(user) === true,
      count: (user) => d.invitesOf(user),
    };
  }

  /** Records and drops pending invites, and tells the devices concerned. */
  function applyInvites(
    key: string,
    group: string,
    plan: InvitePlan,
    actor: string,
    now: number,
    notify: NotifySet,
  ): void {
    const users = d.invites.get(group) ?? new Set<string>();
    for (const u of plan.drop) users.delete(u);
    const tell = (user: string, suffix: string, event: GroupEvent) =>
      pushEvent(
        d,
        devicesOf(d, user).map((device) => ({ user, device })),
        key + suffix,
        event,
        now,
        notify,
      );
    for (const { user, event } of plan.add) {
      users.add(user);
      tell(user, `#i${orderedKey(user, '')}`, event);
    }
    if (plan.own) tell(actor, '#own', plan.own);
    if (plan.drop.length === 0 && plan.add.length === 0) return;
    if (users.size === 0) d.invites.delete(group);
    else d.invites.set(group, users);
  }

  /**
   * For a remote driver: reads every record of the users a change names, so that one load round
   * brings them all (the change's checks stop at the first unknown or capped user, and a round
   * only sees the reads made before that).
   */
  function touchUsers(item: GroupInput): void {
    const c = item.change;
    const named = [...('members' in c ? c.members : []), ...('invite' in c ? (c.invite ?? []) : [])];
    for (const u of named) {
      d.devices.get(u);
      d.userGroups.get(u);
    }
  }

  function commitGroup(item: GroupInput, key: string, now: number): AppendOutcome {
    if (d.remote) touchUsers(item);
    const old = d.groups.get(item.group);
    const hasDevice = (u: string): boolean => devicesOf(d, u).length > 0;
    const pending = pendingInvites(item.group);
    const plan = planChange(item, old, hasDevice, pending.has);
    if (typeof plan === 'string') return { ok: false, code: plan };
    const groupCount = (u: string): number => d.userGroups.get(u)?.size ?? 0;
    if (plan && overGroupQuota(plan.joined, groupCount, quotas.groupsPerUser) !== undefined) {
      return { ok: false, code: 'quota_exceeded' };
    }
    const invites = planInvites(item, old, plan, hasDevice, pending, quotas.invitesPerUser);
    if (typeof invites === 'string') return { ok: false, code: invites };
    d.dedupe.set(key, now);
    const notify = new NotifySet();
    if (plan !== null) {
      const group = applyChange(item, plan, old);
      const { event } = plan;
      const full: GroupEvent = { ...event, name: group.name, snapshot: snapshotOf(group) };
      const { targets } = changeTargets(plan, memberDevices(d, group), reads.devices);
      // Each form stored once; the entries, in the targets' order, point at theirs.
      if (targets.some((t) => t.full)) d.events.set(`${key}#full`, { ts: now, event: full });
      if (targets.some((t) => !t.full)) d.events.set(`${key}#delta`, { ts: now, event });
      for (const t of targets) {
        push(d, t.device, { kind: 'group', ts: now, event: t.full ? `${key}#full` : `${key}#delta` });
        notify.add(t.device);
      }
    }
    applyInvites(key, item.group, invites, item.from.user, now, notify);
    return { ok: true, ts: now, duplicate: false, notify: notify.list };
  }

  return function commit(item: AppendInput, now: number): AppendOutcome {
    const key = dedupeKey(item.from, item.id);
    const original = d.dedupe.get(key);
    if (original !== undefined) return { ok: true, ts: original, duplicate: true, notify: [] };
    if (item.kind === 'group') return commitGroup(item, key, now);
    if (item.kind === 'msg') return commitMessage(item, key, now);
    const plan = planReceipt(item, reads, () => {
      const records = item.ids.flatMap((id) => d.sent.get(orderedKey(item.to, id)) ?? []);
      return receiptIds(item, records, (g) => d.groups.get(g)?.since.get(item.from.user));
    });
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageOf);
    if (!placed.ok) return placed;
    d.dedupe.set(key, now);
    const { ids, targets } = plan;
    if (ids.length === 0) return { ok: true, ts: now, duplicate: false, notify: [] };
    for (const t of targets) {
      push(d, t, { kind: 'status', ts: now, status: 'read', ids: [...ids], by: item.from.user });
    }
    return { ok: true, ts: now, duplicate: false, notify: targets };
  };
}
