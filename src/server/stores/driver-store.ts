/**
 * {@link driverStore}: the whole {@link ServerStore} contract over a {@link StoreDriver}. The
 * planner and the kit's rules decide; this module does what every store otherwise writes again
 * around them: offsets from the inbox head (never skipped, never reused), usage, releasing a body
 * with its last entry, "delivered once per user", status fan-out to the sender's devices,
 * expiry's statuses and gap notices, the pending inbox a user's first device takes over, join
 * snapshots, device and user removal, the key directory's uploads and claims. The driver only
 * keeps records (driver.ts). The memory store is this over plain maps (memory.ts).
 * @packageDocumentation
 */
import type { PushToken } from '../push/types.js';
import { actionWindow, keysAfter, preKeyQuotaError, resolveQuotas, type StoreQuotas } from '../quotas.js';
import type {
  AppendInput,
  AppendOutcome,
  ClaimOptions,
  DeviceAddress,
  EntryStatus,
  GroupState,
  InboxEntry,
  KeyBundle,
  KeyUpload,
  NotifyResult,
  ServerStore,
  StoreCapabilities,
  WrittenEntry,
} from '../store.js';
import { assertNotPending, isPendingDevice, PENDING_DEVICE, realDevices } from '../users.js';
import { claimedUsers, notRegistered, uploadKind } from './directory.js';
import { appender, devicesOf, orderedKey, push, pushEvent, takeAt } from './driver-append.js';
import { claimOne, copyEvent, copyKey, copySigned, copyStreams } from './driver-records.js';
import { units } from './driver-runner.js';
import type { DriverEntry, DriverKeys, DriverMessage, StoreDriver } from './driver.js';
import { GapCollector } from './gap-notices.js';
import { tellSender } from './planner.js';
import { joinSnapshot, NotifySet, snapshotOf, type Groups } from './relational.js';

/** Options of {@link driverStore}. */
export interface DriverStoreOptions {
  /** The store's name (`ServerStore.name`). */
  name: string;
  /** What its errors call it ("memory server store"). */
  label?: string;
  /** Storage quotas (see {@link StoreQuotas}). @default DEFAULT_QUOTAS */
  quotas?: Partial<StoreQuotas>;
  /**
   * Asked before every operation with its name (`append`, `ack`, …); a throw rejects the call
   * before it reads or writes anything (a test's fault switch).
   */
  before?: (op: keyof ServerStore) => void;
}

/** What a driver store can do beyond the required contract: all of it. */
const CAPABILITIES: StoreCapabilities = {
  pushTokens: true,
  inboxSize: true,
  ping: true,
  atomicBatch: true,
  actionCounts: true,
};

/**
 * A {@link ServerStore} over a synchronous {@link StoreDriver}: every writing call runs in one of
 * the driver's atomic units, so each call is all or nothing (a whole batch, `atomicBatch`), and
 * a call's synchronous run keeps the no-skip rule. The driver keeps records; the rules are here
 * and in the kit.
 *
 * @example
 * ```ts
 * const store = driverStore(myLmdbDriver(env), { name: 'lmdb' });
 * ```
 */
export function driverStore(
  d: StoreDriver,
  options: DriverStoreOptions,
): ServerStore & Required<Pick<ServerStore, 'setPushToken' | 'pushToken'>> {
  const label = options.label ?? `${options.name} server store`;
  const quotas = resolveQuotas(options.quotas, label);
  const check = options.before ?? (() => {});
  const commit = appender(d, quotas);
  const { unit, view } = units(d);

  /**
   * Drops one reference of `key` as an entry leaves; the body goes with the last. With `user`
   * (a recipient user's entry acked or expired, not a removed device's), the first of the user's
   * entries to leave tells the sender, once, in `statuses`.
   */
  function release(key: string, user?: string, statuses?: Groups): DriverMessage | undefined {
    const m = d.messages.get(key);
    if (!m) return undefined; // unreachable while refs are counted right
    m.refs--;
    if (user !== undefined && statuses) {
      tellSender(statuses, { from: m.from.user, id: m.id }, user, () => {
        if (m.told.has(user)) return false;
        m.told.add(user);
        return true;
      });
    }
    if (m.refs <= 0) d.messages.delete(key);
    else d.messages.set(key, m);
    return m;
  }

  /** Appends one status per group to every device of the group's user. */
  function fanOut(
    groups: Groups,
    status: EntryStatus,
    now: number,
    notify: NotifySet,
    written?: WrittenEntry[],
  ) {
    for (const g of groups.values()) {
      for (const device of devicesOf(d, g.user)) {
        const at = { user: g.user, device };
        const offset = push(d, at, { kind: 'status', ts: now, status, ids: [...g.ids], by: g.by });
        notify.add(at);
        written?.push({
          device: at,
          entry: { offset, kind: 'status', status, ids: [...g.ids], by: g.by, ts: now },
        });
      }
    }
  }

  /** A device new to the store learns its user's groups from snapshots, as a newly added member would. */
  function joinSnapshots(device: DeviceAddress, now: number): number {
    let count = 0;
    for (const id of d.userGroups.get(device.user) ?? []) {
      const event = joinSnapshot(id, d.groups.get(id)!, device.user);
      pushEvent(
        d,
        [device],
        `join#${orderedKey(device.user, device.device)}#${orderedKey(id, String(now))}`,
        event,
        now,
      );
      count++;
    }
    return count;
  }

  /** Removes a device (or a pending inbox) with its inbox, keys and push token. */
  function dropDevice(device: DeviceAddress): void {
    d.keys.delete(device);
    d.pushTokens.delete(device);
    const inbox = d.inbox(device);
    if (!inbox) return;
    for (const [, e] of inbox.after(0)) if (e.kind === 'msg') release(e.message);
    d.dropInbox(device);
  }

  /** The user's first device takes over its pending inbox: entries, order and offsets. */
  function takeOver(device: DeviceAddress): void {
    const pending = d.inbox({ user: device.user, device: PENDING_DEVICE });
    if (!pending) return;
    d.dropInbox(device);
    const inbox = d.inbox(device, true);
    Object.assign(inbox.head, pending.head);
    for (const [offset, e] of pending.after(0)) inbox.put(offset, e);
    inbox.save();
    d.dropInbox(pending.device);
  }

  function toEntry(offset: number, e: DriverEntry): InboxEntry | undefined {
    if (e.kind === 'status')
      return { offset, kind: 'status', status: e.status, ids: [...e.ids], by: e.by, ts: e.ts };
    if (e.kind === 'group') {
      const stored = d.events.get(e.event);
      return stored && { offset, kind: 'group', event: copyEvent(stored.event), ts: e.ts };
    }
    if (e.kind === 'gap')
      return { offset, kind: 'gap', reason: e.reason, streams: copyStreams(e.streams), ts: e.ts };
    const m = d.messages.get(e.message);
    if (!m) return undefined; // unreachable while refs are counted right
    const out: InboxEntry = {
      offset,
      kind: 'msg',
      id: m.id,
      from: { user: m.from.user, device: m.from.device },
      to: m.to,
      seq: m.seq,
      ts: m.ts,
      body: new Uint8Array(e.body ?? m.body),
    };
    if (m.group) out.group = true;
    return out;
  }

  return {
    name: options.name,
    capabilities: CAPABILITIES,

    async registerDevice(device: DeviceAddress, now: number): Promise<NotifyResult> {
      check('registerDevice');
      return unit(() => {
        assertNotPending(label, device);
        const list = d.devices.get(device.user);
        if (list?.includes(device.device)) return { count: 0, notify: [] };
        // The first device takes over the pending inbox (its only "device"): entries, order, offsets.
        const pending = list?.[0] === PENDING_DEVICE;
        if (pending) takeOver(device);
        d.devices.set(
          device.user,
          !list ? [device.device] : pending ? [device.device, ...list.slice(1)] : [...list, device.device],
        );
        const count = joinSnapshots(device, now);
        const waiting = (d.inbox(device)?.head.count ?? 0) > 0;
        return { count, notify: waiting ? [{ user: device.user, device: device.device }] : [] };
      });
    },

    async unregisterDevice(device: DeviceAddress): Promise<boolean> {
      check('unregisterDevice');
      return unit(() => {
        const list = d.devices.get(device.user);
        const i = list ? list.indexOf(device.device) : -1;
        if (!list || i < 0) return false;
        list.splice(i, 1);
        if (list.length === 0) d.devices.delete(device.user);
        else d.devices.set(device.user, list);
        dropDevice(device);
        return true;
      });
    },

    async registerUser(user: string, now: number): Promise<boolean> {
      check('registerUser');
      return unit(() => {
        if (d.devices.get(user)) return false; // a device, or a pending inbox already
        d.devices.set(user, [PENDING_DEVICE]);
        joinSnapshots({ user, device: PENDING_DEVICE }, now);
        return true;
      });
    },

    async unregisterUser(user: string): Promise<string[] | undefined> {
      check('unregisterUser');
      return unit(() => {
        const list = d.devices.get(user);
        if (!list) return undefined;
        d.devices.delete(user);
        for (const device of list) dropDevice({ user, device });
        return realDevices(list);
      });
    },

    async devices(user: string): Promise<string[]> {
      check('devices');
      return view(() => realDevices(devicesOf(d, user)));
    },

    async append(batch: AppendInput[], now: number): Promise<AppendOutcome[]> {
      check('append');
      return unit(() => batch.map((item) => commit(item, now)));
    },

    async readInbox(device: DeviceAddress, after: number, limit: number): Promise<InboxEntry[]> {
      check('readInbox');
      return view(() => {
        const out: InboxEntry[] = [];
        const inbox = limit > 0 ? d.inbox(device) : undefined;
        if (!inbox) return out;
        for (const [offset, e] of inbox.after(after)) {
          const entry = toEntry(offset, e);
          if (entry) out.push(entry);
          if (out.length >= limit) break;
        }
        return out;
      });
    },

    async ack(device: DeviceAddress, offsets: number[], now: number): Promise<NotifyResult> {
      check('ack');
      return unit(() => {
        const inbox = d.inbox(device);
        if (!inbox) return { count: 0, notify: [] };
        let count = 0;
        // sender user → ids newly delivered to this (recipient) user
        const delivered: Groups = new Map();
        for (const offset of offsets) {
          const e = inbox.get(offset);
          if (!e) continue;
          takeAt(inbox, offset, e);
          count++;
          if (e.kind === 'msg') release(e.message, device.user, delivered);
        }
        if (count > 0) inbox.save();
        const notify = new NotifySet();
        const entries: WrittenEntry[] = [];
        fanOut(delivered, 'delivered', now, notify, entries);
        return entries.length > 0 ? { count, notify: notify.list, entries } : { count, notify: notify.list };
      });
    },

    async expire(cutoff: number, now: number): Promise<NotifyResult> {
      check('expire');
      return unit(() => {
        let count = 0;
        // (sender user, recipient user) → ids of messages that user never got, each once
        const expired: Groups = new Map();
        const gaps = new GapCollector<string>();
        for (const inbox of d.inboxes(cutoff)) {
          const addr = inbox.device;
          const k = orderedKey(addr.user, addr.device);
          let removed = 0;
          for (const [offset, e] of inbox.after(0)) {
            if (e.ts >= cutoff) continue;
            takeAt(inbox, offset, e);
            removed++;
            if (e.kind === 'gap') gaps.carry(k, addr, e.streams);
            if (e.kind !== 'msg') continue;
            const m = release(e.message, addr.user, expired);
            if (m) gaps.add(k, addr, { from: m.from, to: m.to, group: m.group, seq: m.seq });
          }
          if (removed > 0) inbox.save();
          count += removed;
        }
        d.dedupe.dropOlder(cutoff);
        d.sent.dropOlder(cutoff);
        d.events.dropOlder(cutoff);
        const notify = new NotifySet();
        fanOut(expired, 'expired', now, notify);
        for (const g of gaps.notices()) {
          for (const streams of g.notices)
            push(d, g.addr, { kind: 'gap', ts: now, reason: 'expired', streams });
          notify.add(g.addr);
        }
        return { count, notify: notify.list };
      });
    },

    async group(id: string): Promise<GroupState | undefined> {
      check('group');
      return view(() => {
        const g = d.groups.get(id);
        return g && { id, name: g.name, ver: g.ver, members: snapshotOf(g) };
      });
    },

    async groupsOf(user: string): Promise<string[]> {
      check('groupsOf');
      return view(() => [...(d.userGroups.get(user) ?? [])]);
    },

    async related(viewer: string, target: string): Promise<boolean> {
      check('related');
      return view(() => {
        if (viewer === target || d.consents.get(orderedKey(viewer, target))) return true;
        for (const id of d.userGroups.get(viewer) ?? []) {
          const g = d.groups.get(id)!;
          // The target took part in the group while the viewer was in it.
          if ((g.acted.get(target) ?? -1) >= g.since.get(viewer)!) return true;
        }
        return false;
      });
    },

    async setLastSeen(user: string, ts: number): Promise<void> {
      check('setLastSeen');
      return unit(() => {
        if ((d.lastSeen.get(user) ?? -Infinity) < ts) d.lastSeen.set(user, ts);
      });
    },

    async lastSeen(user: string): Promise<number | undefined> {
      check('lastSeen');
      return view(() => d.lastSeen.get(user));
    },

    async putKeys(device: DeviceAddress, keys: KeyUpload): Promise<void> {
      check('putKeys');
      return unit(() => {
        // A pending inbox never has keys: nobody holds their private halves.
        if (isPendingDevice(device.device) || !devicesOf(d, device.user).includes(device.device)) {
          throw notRegistered(label, device);
        }
        const old = d.keys.get(device);
        const kind = uploadKind(old?.identityKey, keys, label); // throws before any write
        const kept = kind === 'update' ? old : undefined;
        if (
          keysAfter(kept?.preKeys, keys.preKeys) > quotas.preKeys ||
          keysAfter(kept?.kyberPreKeys, keys.kyberPreKeys) > quotas.preKeys
        ) {
          throw preKeyQuotaError(label, quotas.preKeys);
        }
        // A first upload or a re-install starts a fresh record: no one-time key of an old identity.
        const stored: DriverKeys = kept ?? {
          registrationId: keys.registrationId,
          identityKey: new Uint8Array(0),
          signedPreKey: keys.signedPreKey!,
          lastResortKyber: keys.lastResortKyber!,
          preKeys: new Map(),
          kyberPreKeys: new Map(),
        };
        stored.registrationId = keys.registrationId;
        stored.identityKey = new Uint8Array(keys.identityKey);
        if (keys.signedPreKey) stored.signedPreKey = copySigned(keys.signedPreKey);
        if (keys.lastResortKyber) stored.lastResortKyber = copySigned(keys.lastResortKyber);
        for (const p of keys.preKeys ?? []) stored.preKeys.set(p.id, copyKey(p));
        for (const p of keys.kyberPreKeys ?? []) stored.kyberPreKeys.set(p.id, copySigned(p));
        d.keys.set(device, stored);
      });
    },

    async claimKeys(
      users: string | readonly string[],
      device?: string,
      options?: ClaimOptions,
    ): Promise<KeyBundle[]> {
      check('claimKeys');
      // One unit: no other claim can run between two users of this one.
      return unit(() => {
        const out: KeyBundle[] = [];
        for (const user of claimedUsers(users)) {
          for (const id of devicesOf(d, user)) {
            if (device !== undefined && id !== device) continue;
            const at = { user, device: id };
            const k = d.keys.get(at);
            if (!k) continue;
            out.push(claimOne(user, id, k, options?.oneTime?.(id, user) ?? true));
            d.keys.set(at, k);
          }
        }
        return out;
      });
    },

    async setPushToken(device: DeviceAddress, token: PushToken | undefined): Promise<void> {
      check('setPushToken');
      return unit(() => {
        if (!token) d.pushTokens.delete(device);
        else if (devicesOf(d, device.user).includes(device.device)) d.pushTokens.set(device, { ...token });
      });
    },

    async pushToken(device: DeviceAddress): Promise<PushToken | undefined> {
      check('pushToken');
      return view(() => {
        const t = d.pushTokens.get(device);
        return t && { ...t };
      });
    },

    async inboxSize(): Promise<number> {
      check('inboxSize');
      return view(() => {
        let n = 0;
        for (const inbox of d.inboxes()) n += inbox.head.count;
        return n;
      });
    },

    async ping(): Promise<void> {
      check('ping');
    },

    async countActions(
      kind: string,
      users: readonly string[],
      windowMs: number,
      now: number,
    ): Promise<number[]> {
      check('countActions');
      const win = actionWindow(now, windowMs);
      return unit(() =>
        users.map((user) => {
          const k = orderedKey(kind, user);
          const c = d.actions.get(k);
          const n = c && c.win === win ? c.n + 1 : 1;
          d.actions.set(k, { win, n });
          return n;
        }),
      );
    },

    async keyCount(device: DeviceAddress): Promise<{ preKeys: number; kyberPreKeys: number } | undefined> {
      check('keyCount');
      return view(() => {
        const k = d.keys.get(device);
        return k && { preKeys: k.preKeys.size, kyberPreKeys: k.kyberPreKeys.size };
      });
    },

    async close(): Promise<void> {},
  };
}
