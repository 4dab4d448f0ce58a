/**
 * The in-memory {@link ServerStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is a
 * restart after a crash) and a `failWhen` fault switch.
 *
 * Longer than 500 lines because it is the reference: every part of the contract (groups, device
 * lists, statuses, gap notices, quotas, keys, push tokens) is here in plain maps. It takes its
 * rules (refusals, targets, placement, consent, statuses, group changes, invites, gap notices,
 * key uploads and claims' users, quotas) from the public store kit (store-kit.ts) alone, a lint
 * rule keeps it so, and it is the kit's worked example: what is left here is what any store of
 * one's own writes, its storage (maps instead of tables), offsets, releasing bodies with their last
 * entry, and the records the rules ask about.
 * @packageDocumentation
 */
import { addressKey as deviceKey } from '../address.js';
import type { PushToken } from '../push/types.js';
import type {
  BeforeWrite,
  AppendInput,
  AppendOutcome,
  ClaimOptions,
  MessageInput,
  DeviceAddress,
  EntryStatus,
  GapReason,
  GapStream,
  GroupEvent,
  GroupInput,
  GroupRole,
  GroupState,
  InboxEntry,
  KeyBundle,
  KeyUpload,
  NotifyResult,
  ServerStore,
  WrittenEntry,
} from '../store.js';
import {
  actionWindow,
  addressOf,
  assertNotPending,
  changeTargets,
  claimedUsers,
  extendFullNotices,
  GapCollector,
  isPendingDevice,
  joinSnapshot,
  keysAfter,
  membershipMarks,
  notRegistered,
  NotifySet,
  overGroupQuota,
  PENDING_DEVICE,
  placeMessage,
  planChange,
  planInvites,
  planMessage,
  planReceipt,
  preKeyQuotaError,
  realDevices,
  receiptIds,
  resolveQuotas,
  snapshotOf,
  tellSender,
  uploadKind,
  type AppendReads,
  type ChangePlan,
  type DroppedMessage,
  type Groups,
  type InboxUsage,
  type InvitePlan,
  type KeyedDevice,
  type PendingInvites,
  type SentRecord,
  type StoreQuotas,
} from '../store-kit.js';

/**
 * Opaque durable state of a memory server store; a new store over the same state is a "re-open
 * after a crash". Its contents are private to this module and may change between versions.
 */
export interface MemoryServerState {
  /** Brand that keeps other objects from passing as a state; nothing else is public. */
  readonly kind: 'postbox.memory-server-state';
}

/** The operations the {@link MemoryServerStoreOptions.failWhen} switch can fail. */
export type ServerStoreOp =
  | 'registerDevice'
  | 'unregisterDevice'
  | 'registerUser'
  | 'unregisterUser'
  | 'devices'
  | 'append'
  | 'readInbox'
  | 'ack'
  | 'expire'
  | 'group'
  | 'groupsOf'
  | 'related'
  | 'setLastSeen'
  | 'lastSeen'
  | 'putKeys'
  | 'claimKeys'
  | 'keyCount'
  | 'setPushToken'
  | 'pushToken'
  | 'inboxSize'
  | 'ping'
  | 'countActions';

/** Options of {@link memoryServerStore}. */
export interface MemoryServerStoreOptions {
  /**
   * Share state across store instances to simulate restarts.
   * @default a fresh state
   */
  state?: MemoryServerState;
  /**
   * Fault switch, asked before every operation: when it returns true the operation rejects with
   * an Error and changes nothing.
   * @default never fail
   */
  failWhen?: (op: ServerStoreOp) => boolean;
  /** Storage quotas (see {@link StoreQuotas}). @default DEFAULT_QUOTAS */
  quotas?: Partial<StoreQuotas>;
  /**
   * Fault hook for tests (see {@link BeforeWrite}), called before each change to the state in
   * the writing calls (append, ack, expire, registering and unregistering). With it, each such
   * call copies the state first and puts the copy back when the hook throws, so a failed call
   * changes nothing; without it nothing is copied.
   * @default none
   */
  beforeWrite?: BeforeWrite;
}

/** A committed message: its body is kept while `refs` inbox entries point at it. */
interface StoredMessage {
  from: DeviceAddress;
  id: string;
  to: string;
  group: boolean;
  seq: number;
  ts: number;
  /** The body every entry shows; empty for an end-to-end encrypted message (entries have their own). */
  body: Uint8Array;
  /** Inbox entries referencing this message. */
  refs: number;
  /** Recipient users a device of which has acked it (each produced its `delivered`). */
  ackedBy: Set<string>;
}

type StoredEntry =
  /**
   * `body`: this device's own envelope of an end-to-end encrypted message; `size`: the body bytes
   * the entry counts for in its inbox's quota.
   */
  | { kind: 'msg'; ts: number; message: string; body?: Uint8Array; size: number }
  | { kind: 'status'; ts: number; status: EntryStatus; ids: string[]; by: string }
  | { kind: 'group'; ts: number; event: GroupEvent }
  | { kind: 'gap'; ts: number; reason: GapReason; streams: GapStream[] };

interface StoredGroup {
  name: string;
  ver: number;
  /** user → role, in join order. */
  members: Map<string, GroupRole>;
  /** member → the version its current membership began at. */
  since: Map<string, number>;
  /** member → the latest version at which it took part (created, changed, sent a message). */
  acted: Map<string, number>;
}

interface Inbox {
  /** Last offset handed out; never decreases, so offsets are not reused after deletes. */
  last: number;
  /** Entries by offset; inserted in increasing offset order, so iteration is offset order. */
  entries: Map<number, StoredEntry>;
  /** Message body bytes of the entries (the inbox-bytes quota). */
  bytes: number;
  /** Offsets of its `inbox_full` gap notices (some may be acked since: checked when used). */
  full?: number[];
}

/** A one-time EC prekey, as the directory stores and hands it out. */
type PublicPreKey = NonNullable<KeyBundle['preKey']>;
/** A signed prekey or a Kyber prekey. */
type SignedPublicKey = KeyBundle['signedPreKey'];

/** A device's entry in the key directory. Maps keep upload order: the oldest key comes first. */
interface StoredKeys {
  registrationId: number;
  identityKey: Uint8Array;
  signedPreKey: SignedPublicKey;
  lastResortKyber: SignedPublicKey;
  /** One-time keys by id: a re-uploaded id replaces the key in place. */
  preKeys: Map<number, PublicPreKey>;
  kyberPreKeys: Map<number, SignedPublicKey>;
}

interface ServerData extends MemoryServerState {
  /** user → device ids in registration order. */
  devices: Map<string, string[]>;
  /** device key → inbox. */
  inboxes: Map<string, Inbox>;
  /** dedupe key → message still referenced by some inbox. */
  messages: Map<string, StoredMessage>;
  /** dedupe key → original commit time (messages, receipts, group changes). */
  dedupe: Map<string, number>;
  /**
   * (sender user, message id) → where messages with that id went, with their commit times: what
   * statuses about them are checked against (kept as long as their dedupe records).
   */
  sent: Map<string, Array<SentRecord & { ts: number }>>;
  groups: Map<string, StoredGroup>;
  /** user → ids of the groups it is in. */
  userGroups: Map<string, Set<string>>;
  /** group → users holding a pending invite to it (absent in a state made by an older version). */
  invites?: Map<string, Set<string>>;
  /** (viewer, target) pairs where target consented to viewer: it wrote to viewer 1:1. */
  consents: Set<string>;
  lastSeen: Map<string, number>;
  /** device key → its keys in the directory. */
  keys: Map<string, StoredKeys>;
  /** device key → push token. */
  pushTokens: Map<string, PushToken>;
  /** (action kind, user) → its count in its current window (absent in a state made by an older version). */
  actions?: Map<string, { win: number; n: number }>;
}

/** Creates an empty state for {@link memoryServerStore}. */
export function createMemoryServerState(): MemoryServerState {
  const data: ServerData = {
    kind: 'postbox.memory-server-state',
    devices: new Map(),
    inboxes: new Map(),
    messages: new Map(),
    dedupe: new Map(),
    sent: new Map(),
    groups: new Map(),
    userGroups: new Map(),
    invites: new Map(),
    consents: new Set(),
    lastSeen: new Map(),
    keys: new Map(),
    pushTokens: new Map(),
    actions: new Map(),
  };
  return data;
}

const LABEL = 'memory server store';

// Length-prefixed so that no two different tuples share a key.
const dedupeKey = (from: DeviceAddress, id: string): string =>
  `${from.user.length}:${from.user}${from.device.length}:${from.device}${id}`;
/** An ordered pair: `(a, b)` and `(b, a)` differ. */
const orderedKey = (a: string, b: string): string => `${a.length}:${a}${b}`;
const EMPTY = new Uint8Array(0);

const copyKey = (k: PublicPreKey): PublicPreKey => ({ id: k.id, key: new Uint8Array(k.key) });
const copySigned = (k: SignedPublicKey): SignedPublicKey => ({
  id: k.id,
  key: new Uint8Array(k.key),
  signature: new Uint8Array(k.signature),
});

/**
 * One device's bundle, taking its oldest one-time keys (when `oneTime`) out of the directory in
 * the same step.
 */
function claimOne(user: string, device: string, k: StoredKeys, oneTime: boolean): KeyBundle {
  const pre = oneTime ? (k.preKeys.values().next().value as PublicPreKey | undefined) : undefined;
  if (pre) k.preKeys.delete(pre.id);
  const kyber = oneTime ? (k.kyberPreKeys.values().next().value as SignedPublicKey | undefined) : undefined;
  if (kyber) k.kyberPreKeys.delete(kyber.id);
  const bundle: KeyBundle = {
    user,
    device,
    registrationId: k.registrationId,
    identityKey: new Uint8Array(k.identityKey),
    signedPreKey: copySigned(k.signedPreKey),
    kyberPreKey: copySigned(kyber ?? k.lastResortKyber),
  };
  if (pre) bundle.preKey = copyKey(pre);
  return bundle;
}

/**
 * A {@link ServerStore} kept in memory. Every operation runs synchronously inside its promise,
 * so each call is atomic and the no-skip rule holds trivially.
 *
 * @example
 * ```ts
 * const disk = createMemoryServerState();
 * let store = memoryServerStore({ state: disk });
 * // … crash …
 * store = memoryServerStore({ state: disk }); // same devices, inboxes, dedupe records
 * ```
 */
export function memoryServerStore(
  options: MemoryServerStoreOptions = {},
): ServerStore & Required<Pick<ServerStore, 'setPushToken' | 'pushToken'>> & { readonly name: 'memory' } {
  const data = (options.state ?? createMemoryServerState()) as ServerData;
  const failWhen = options.failWhen;
  const quotas = resolveQuotas(options.quotas, LABEL);

  function check(op: ServerStoreOp): void {
    if (failWhen?.(op)) throw new Error(`${LABEL}: injected failure in ${op}`);
  }

  const beforeWrite = options.beforeWrite;
  /** Asks the fault hook before a change to the state. */
  function wrote(what: string): void {
    beforeWrite?.(what);
  }
  /** Runs a writing call: with a fault hook, all of it or (the hook threw) none of it. */
  function atomically<T>(fn: () => T): T {
    if (!beforeWrite) return fn();
    const saved = structuredClone(data);
    try {
      return fn();
    } catch (e) {
      Object.assign(data, saved);
      throw e;
    }
  }

  function devicesOf(user: string): string[] {
    return data.devices.get(user) ?? [];
  }

  function push(device: DeviceAddress, entry: StoredEntry): number {
    wrote('inbox');
    const k = deviceKey(device);
    let inbox = data.inboxes.get(k);
    if (!inbox) data.inboxes.set(k, (inbox = { last: 0, entries: new Map(), bytes: 0 }));
    inbox.entries.set(++inbox.last, entry);
    if (entry.kind === 'msg') inbox.bytes += entry.size;
    return inbox.last;
  }

  /** Deletes one entry of an inbox, keeping its byte count. */
  function removeEntry(inbox: Inbox, offset: number, e: StoredEntry): void {
    wrote('delete');
    inbox.entries.delete(offset);
    if (e.kind === 'msg') inbox.bytes -= e.size;
  }

  /** A device's inbox usage now (the quota check's view). */
  function usageOf(d: DeviceAddress): InboxUsage {
    const inbox = data.inboxes.get(deviceKey(d));
    return { entries: inbox?.entries.size ?? 0, bytes: inbox?.bytes ?? 0 };
  }

  /** A full device skipped by a message: its one `inbox_full` notice now names it too. */
  function noteSkipped(d: DeviceAddress, m: DroppedMessage, now: number): void {
    const k = deviceKey(d);
    let inbox = data.inboxes.get(k);
    if (!inbox) data.inboxes.set(k, (inbox = { last: 0, entries: new Map(), bytes: 0 }));
    const held: GapStream[][] = [];
    for (const o of inbox.full ?? []) {
      const e = inbox.entries.get(o);
      if (e?.kind !== 'gap' || e.reason !== 'inbox_full') continue;
      held.push(e.streams);
      inbox.entries.delete(o);
    }
    inbox.full = extendFullNotices(held, [m]).map((streams) =>
      push(d, { kind: 'gap', ts: now, reason: 'inbox_full', streams }),
    );
  }

  /** Every device of every member of a group, in member then registration order. */
  function memberDevices(g: StoredGroup): DeviceAddress[] {
    const out: DeviceAddress[] = [];
    for (const user of g.members.keys()) {
      for (const device of devicesOf(user)) out.push({ user, device });
    }
    return out;
  }

  function joinGroup(id: string, user: string): void {
    let set = data.userGroups.get(user);
    if (!set) data.userGroups.set(user, (set = new Set()));
    set.add(id);
  }

  function leaveGroup(id: string, user: string): void {
    data.userGroups.get(user)?.delete(id);
  }

  /** Applies a planned membership change (see `planChange`) to the group and the member index. */
  function applyChange(item: GroupInput, plan: ChangePlan, old: StoredGroup | undefined): StoredGroup {
    const group: StoredGroup = {
      ...plan.after,
      since: new Map(old?.since),
      acted: new Map(old?.acted),
    };
    const marks = membershipMarks(item, plan);
    for (const u of plan.removed) {
      group.since.delete(u);
      group.acted.delete(u);
    }
    for (const u of marks.joined) group.since.set(u, marks.ver);
    if (marks.acted !== undefined) group.acted.set(marks.acted, marks.ver);
    data.groups.set(item.group, group);
    for (const u of plan.joined) joinGroup(item.group, u);
    for (const u of plan.removed) leaveGroup(item.group, u);
    return group;
  }

  /** The pending invites of one group, as `planInvites` asks about them. */
  function pendingInvites(group: string): PendingInvites {
    const invites = (data.invites ??= new Map());
    return {
      has: (user) => invites.get(group)?.has(user) === true,
      count: (user) => {
        let n = 0;
        for (const users of invites.values()) if (users.has(user)) n++;
        return n;
      },
    };
  }

  /** Records and drops pending invites, and tells the devices concerned. */
  function applyInvites(
    group: string,
    plan: InvitePlan,
    actor: string,
    now: number,
    notify: NotifySet,
  ): void {
    const invites = (data.invites ??= new Map());
    let users = invites.get(group);
    for (const u of plan.drop) users?.delete(u);
    if (plan.add.length > 0 && !users) invites.set(group, (users = new Set()));
    const tell = (user: string, event: GroupEvent) => {
      for (const device of devicesOf(user)) {
        push({ user, device }, { kind: 'group', ts: now, event });
        notify.add({ user, device });
      }
    };
    for (const { user, event } of plan.add) {
      users!.add(user);
      tell(user, event);
    }
    if (plan.own) tell(actor, plan.own);
    if (users?.size === 0) invites.delete(group);
  }

  function commitGroup(item: GroupInput, key: string, now: number): AppendOutcome {
    const old = data.groups.get(item.group);
    const hasDevice = (u: string): boolean => devicesOf(u).length > 0;
    const pending = pendingInvites(item.group);
    const plan = planChange(item, old, hasDevice, pending.has);
    if (typeof plan === 'string') return { ok: false, code: plan };
    const groupCount = (u: string): number => data.userGroups.get(u)?.size ?? 0;
    if (plan && overGroupQuota(plan.joined, groupCount, quotas.groupsPerUser) !== undefined) {
      return { ok: false, code: 'quota_exceeded' };
    }
    const invites = planInvites(item, old, plan, hasDevice, pending, quotas.invitesPerUser);
    if (typeof invites === 'string') return { ok: false, code: invites };
    wrote('dedupe');
    data.dedupe.set(key, now);
    const notify = new NotifySet();
    if (plan !== null) {
      const group = applyChange(item, plan, old);
      const { event } = plan;
      const full: GroupEvent = { ...event, name: group.name, snapshot: snapshotOf(group) };
      for (const t of changeTargets(plan, memberDevices(group), reads.devices).targets) {
        push(t.device, { kind: 'group', ts: now, event: t.full ? full : event });
        notify.add(t.device);
      }
    }
    applyInvites(item.group, invites, item.from.user, now, notify);
    return { ok: true, ts: now, duplicate: false, notify: notify.list };
  }

  /** The user's devices that have keys, in registration order. */
  function keyedDevices(user: string): KeyedDevice[] {
    const out: KeyedDevice[] = [];
    for (const device of devicesOf(user)) {
      const k = data.keys.get(deviceKey({ user, device }));
      if (k) out.push({ user, device, rid: k.registrationId });
    }
    return out;
  }

  /** What the append planner reads of this store (planner.ts). */
  const reads: AppendReads<DeviceAddress> = {
    devices: (user) => devicesOf(user).map((device) => ({ user, device })),
    keyed: keyedDevices,
    memberVer(group, user) {
      const g = data.groups.get(group);
      return g?.members.has(user) ? g.ver : undefined;
    },
    memberDevices(group) {
      const g = data.groups.get(group);
      return g ? memberDevices(g) : [];
    },
  };

  function commitMessage(item: MessageInput, key: string, now: number): AppendOutcome {
    const plan = planMessage(item, reads);
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageOf);
    if (!placed.ok) return placed;
    const { targets, bodies, skipped } = placed;
    const { ver } = plan;
    if (plan.consent) data.consents.add(orderedKey(item.to, item.from.user));
    if (ver !== null) data.groups.get(item.to)!.acted.set(item.from.user, ver);
    wrote('dedupe');
    data.dedupe.set(key, now);
    const sk = orderedKey(item.from.user, item.id);
    const records = data.sent.get(sk) ?? [];
    records.push({ id: item.id, to: item.to, ver, ts: now });
    data.sent.set(sk, records);
    if (targets.length > 0) {
      wrote('message');
      data.messages.set(key, {
        from: { user: item.from.user, device: item.from.device },
        id: item.id,
        to: item.to,
        group: item.group === true,
        seq: item.seq,
        ts: now,
        body: bodies ? EMPTY : new Uint8Array(item.body),
        refs: targets.length,
        ackedBy: new Set(),
      });
    }
    const offsets = targets.map((d, i) => {
      const body = bodies?.[i];
      return push(
        d,
        body
          ? { kind: 'msg', ts: now, message: key, body: new Uint8Array(body), size: body.byteLength }
          : { kind: 'msg', ts: now, message: key, size: item.body.byteLength },
      );
    });
    // Keyed devices (an end-to-end encrypted message's) carry their registration ids: addresses only.
    const notify = bodies ? targets.map(addressOf) : targets;
    if (skipped.length === 0) return { ok: true, ts: now, duplicate: false, notify, offsets };
    const stream = { from: item.from, to: item.to, group: item.group === true, seq: item.seq };
    for (const d of skipped) noteSkipped(d, stream, now);
    return { ok: true, ts: now, duplicate: false, notify: [...notify, ...skipped.map(addressOf)] };
  }

  function commit(item: AppendInput, now: number): AppendOutcome {
    const key = dedupeKey(item.from, item.id);
    const original = data.dedupe.get(key);
    if (original !== undefined) return { ok: true, ts: original, duplicate: true, notify: [] };
    if (item.kind === 'group') return commitGroup(item, key, now);
    if (item.kind === 'msg') return commitMessage(item, key, now);
    const plan = planReceipt(item, reads, () => {
      const records = item.ids.flatMap((id) => data.sent.get(orderedKey(item.to, id)) ?? []);
      return receiptIds(item, records, (g) => data.groups.get(g)?.since.get(item.from.user));
    });
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageOf);
    if (!placed.ok) return placed;
    wrote('dedupe');
    data.dedupe.set(key, now);
    const { ids, targets } = plan;
    if (ids.length === 0) return { ok: true, ts: now, duplicate: false, notify: [] };
    for (const d of targets) {
      push(d, { kind: 'status', ts: now, status: 'read', ids: [...ids], by: item.from.user });
    }
    return { ok: true, ts: now, duplicate: false, notify: targets };
  }

  /** Records that `user` was told about `m` (delivered or expired); false when it already was. */
  function firstTold(m: StoredMessage, user: string): boolean {
    if (m.ackedBy.has(user)) return false;
    m.ackedBy.add(user);
    return true;
  }

  /** Drops one reference; the body goes with the last one. */
  function unref(key: string): StoredMessage | undefined {
    const message = data.messages.get(key);
    if (message && --message.refs <= 0) data.messages.delete(key);
    return message;
  }

  /** Appends one status per group to every device of the group's user. */
  function fanOut(
    groups: Map<string, { user: string; by: string; ids: string[] }>,
    status: EntryStatus,
    now: number,
    notify: NotifySet,
    written?: WrittenEntry[],
  ): void {
    for (const g of groups.values()) {
      for (const device of devicesOf(g.user)) {
        const d = { user: g.user, device };
        const offset = push(d, { kind: 'status', ts: now, status, ids: [...g.ids], by: g.by });
        notify.add(d);
        written?.push({
          device: d,
          entry: { offset, kind: 'status', status, ids: [...g.ids], by: g.by, ts: now },
        });
      }
    }
  }

  /** A device new to the store learns its user's groups from snapshots, as a newly added member would. */
  function joinSnapshots(device: DeviceAddress, now: number): number {
    let count = 0;
    for (const id of data.userGroups.get(device.user) ?? []) {
      push(device, { kind: 'group', ts: now, event: joinSnapshot(id, data.groups.get(id)!, device.user) });
      count++;
    }
    return count;
  }

  /** Removes a device (or a pending inbox) with its inbox, keys and push token. */
  function dropDevice(device: DeviceAddress): void {
    const k = deviceKey(device);
    data.keys.delete(k);
    data.pushTokens.delete(k);
    const inbox = data.inboxes.get(k);
    if (inbox) {
      for (const e of inbox.entries.values()) if (e.kind === 'msg') unref(e.message);
      data.inboxes.delete(k);
    }
  }

  function copyStreams(streams: GapStream[]): GapStream[] {
    return streams.map((g) => ({ ...g, from: { ...g.from }, ranges: g.ranges.map(([a, b]) => [a, b]) }));
  }

  function copyEvent(e: GroupEvent): GroupEvent {
    const out: GroupEvent = { ...e, members: [...e.members] };
    if (e.snapshot) out.snapshot = e.snapshot.map((m) => ({ ...m }));
    return out;
  }

  function toEntry(offset: number, e: StoredEntry): InboxEntry | undefined {
    if (e.kind === 'status') {
      return { offset, kind: 'status', status: e.status, ids: [...e.ids], by: e.by, ts: e.ts };
    }
    if (e.kind === 'group') return { offset, kind: 'group', event: copyEvent(e.event), ts: e.ts };
    if (e.kind === 'gap')
      return { offset, kind: 'gap', reason: e.reason, streams: copyStreams(e.streams), ts: e.ts };
    const m = data.messages.get(e.message);
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
    name: 'memory',
    capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true, actionCounts: true },

    async registerDevice(device: DeviceAddress, now: number): Promise<NotifyResult> {
      check('registerDevice');
      return atomically(() => {
        assertNotPending(LABEL, device);
        const list = data.devices.get(device.user);
        if (list?.includes(device.device)) return { count: 0, notify: [] };
        if (list?.[0] === PENDING_DEVICE) {
          // The first device takes over the pending inbox (its only "device"): entries, order, offsets.
          list[0] = device.device;
          const pending = data.inboxes.get(deviceKey({ user: device.user, device: PENDING_DEVICE }));
          if (pending) {
            data.inboxes.delete(deviceKey({ user: device.user, device: PENDING_DEVICE }));
            data.inboxes.set(deviceKey(device), pending);
          }
        } else if (!list) data.devices.set(device.user, [device.device]);
        else list.push(device.device);
        const count = joinSnapshots(device, now);
        const waiting = (data.inboxes.get(deviceKey(device))?.entries.size ?? 0) > 0;
        return { count, notify: waiting ? [{ user: device.user, device: device.device }] : [] };
      });
    },

    async unregisterDevice(device: DeviceAddress): Promise<boolean> {
      check('unregisterDevice');
      return atomically(() => {
        const list = data.devices.get(device.user);
        const i = list ? list.indexOf(device.device) : -1;
        if (!list || i < 0) return false;
        list.splice(i, 1);
        if (list.length === 0) data.devices.delete(device.user);
        dropDevice(device);
        return true;
      });
    },

    async registerUser(user: string, now: number): Promise<boolean> {
      check('registerUser');
      return atomically(() => {
        if (data.devices.has(user)) return false; // a device, or a pending inbox already
        data.devices.set(user, [PENDING_DEVICE]);
        joinSnapshots({ user, device: PENDING_DEVICE }, now);
        return true;
      });
    },

    async unregisterUser(user: string): Promise<string[] | undefined> {
      check('unregisterUser');
      return atomically(() => {
        const list = data.devices.get(user);
        if (!list) return undefined;
        data.devices.delete(user);
        for (const device of list) dropDevice({ user, device });
        return realDevices(list);
      });
    },

    async devices(user: string): Promise<string[]> {
      check('devices');
      return realDevices(devicesOf(user));
    },

    async append(batch: AppendInput[], now: number): Promise<AppendOutcome[]> {
      check('append');
      return atomically(() => batch.map((item) => commit(item, now)));
    },

    async readInbox(device: DeviceAddress, after: number, limit: number): Promise<InboxEntry[]> {
      check('readInbox');
      const out: InboxEntry[] = [];
      const inbox = data.inboxes.get(deviceKey(device));
      if (!inbox || limit <= 0) return out;
      for (const [offset, e] of inbox.entries) {
        if (offset <= after) continue;
        const entry = toEntry(offset, e);
        if (entry) out.push(entry);
        if (out.length >= limit) break;
      }
      return out;
    },

    async ack(device: DeviceAddress, offsets: number[], now: number): Promise<NotifyResult> {
      check('ack');
      return atomically(() => {
        const inbox = data.inboxes.get(deviceKey(device));
        const notify = new NotifySet();
        if (!inbox) return { count: 0, notify: [] };
        let count = 0;
        // sender user → ids newly delivered to this (recipient) user
        const delivered: Groups = new Map();
        for (const offset of offsets) {
          const e = inbox.entries.get(offset);
          if (!e) continue;
          removeEntry(inbox, offset, e);
          count++;
          if (e.kind !== 'msg') continue;
          const m = unref(e.message);
          if (m)
            tellSender(delivered, { from: m.from.user, id: m.id }, device.user, () =>
              firstTold(m, device.user),
            );
        }
        const entries: WrittenEntry[] = [];
        fanOut(delivered, 'delivered', now, notify, entries);
        return entries.length > 0 ? { count, notify: notify.list, entries } : { count, notify: notify.list };
      });
    },

    async expire(cutoff: number, now: number): Promise<NotifyResult> {
      check('expire');
      return atomically(() => {
        const notify = new NotifySet();
        let count = 0;
        // (sender user, recipient user) → ids of messages that user never got, each once
        const expired: Groups = new Map();
        const gaps = new GapCollector<string>();
        for (const [k, inbox] of data.inboxes) {
          const sep = k.indexOf(':') + 1 + Number(k.slice(0, k.indexOf(':')));
          const owner = k.slice(k.indexOf(':') + 1, sep);
          const addr = { user: owner, device: k.slice(sep) };
          for (const [offset, e] of inbox.entries) {
            if (e.ts >= cutoff) continue;
            removeEntry(inbox, offset, e);
            count++;
            if (e.kind === 'gap') gaps.carry(k, addr, e.streams);
            if (e.kind !== 'msg') continue;
            const m = unref(e.message);
            if (m) gaps.add(k, addr, { from: m.from, to: m.to, group: m.group, seq: m.seq });
            if (m) tellSender(expired, { from: m.from.user, id: m.id }, owner, () => firstTold(m, owner));
          }
        }
        for (const [key, ts] of data.dedupe) if (ts < cutoff) data.dedupe.delete(key);
        for (const [key, records] of data.sent) {
          const kept = records.filter((r) => r.ts >= cutoff);
          if (kept.length === 0) data.sent.delete(key);
          else if (kept.length < records.length) data.sent.set(key, kept);
        }
        fanOut(expired, 'expired', now, notify);
        for (const d of gaps.notices()) {
          for (const streams of d.notices) push(d.addr, { kind: 'gap', ts: now, reason: 'expired', streams });
          notify.add(d.addr);
        }
        return { count, notify: notify.list };
      });
    },

    async group(id: string): Promise<GroupState | undefined> {
      check('group');
      const g = data.groups.get(id);
      return g && { id, name: g.name, ver: g.ver, members: snapshotOf(g) };
    },

    async groupsOf(user: string): Promise<string[]> {
      check('groupsOf');
      return [...(data.userGroups.get(user) ?? [])];
    },

    async related(viewer: string, target: string): Promise<boolean> {
      check('related');
      if (viewer === target || data.consents.has(orderedKey(viewer, target))) return true;
      for (const id of data.userGroups.get(viewer) ?? []) {
        const g = data.groups.get(id)!;
        // The target took part in the group while the viewer was in it.
        if ((g.acted.get(target) ?? -1) >= g.since.get(viewer)!) return true;
      }
      return false;
    },

    async setLastSeen(user: string, ts: number): Promise<void> {
      check('setLastSeen');
      if ((data.lastSeen.get(user) ?? -Infinity) < ts) data.lastSeen.set(user, ts);
    },

    async lastSeen(user: string): Promise<number | undefined> {
      check('lastSeen');
      return data.lastSeen.get(user);
    },

    async putKeys(device: DeviceAddress, keys: KeyUpload): Promise<void> {
      check('putKeys');
      // A pending inbox never has keys: nobody holds their private halves.
      if (isPendingDevice(device.device) || !devicesOf(device.user).includes(device.device)) {
        throw notRegistered(LABEL, device);
      }
      const k = deviceKey(device);
      const old = data.keys.get(k);
      const kind = uploadKind(old?.identityKey, keys, LABEL); // throws before any write
      const kept = kind === 'update' ? old : undefined;
      if (
        keysAfter(kept?.preKeys, keys.preKeys) > quotas.preKeys ||
        keysAfter(kept?.kyberPreKeys, keys.kyberPreKeys) > quotas.preKeys
      ) {
        throw preKeyQuotaError(LABEL, quotas.preKeys);
      }
      // A first upload or a re-install starts a fresh record: no one-time key of an old identity.
      const stored: StoredKeys =
        kind === 'update'
          ? old!
          : {
              registrationId: keys.registrationId,
              identityKey: EMPTY,
              signedPreKey: keys.signedPreKey!,
              lastResortKyber: keys.lastResortKyber!,
              preKeys: new Map(),
              kyberPreKeys: new Map(),
            };
      data.keys.set(k, stored);
      stored.registrationId = keys.registrationId;
      stored.identityKey = new Uint8Array(keys.identityKey);
      if (keys.signedPreKey) stored.signedPreKey = copySigned(keys.signedPreKey);
      if (keys.lastResortKyber) stored.lastResortKyber = copySigned(keys.lastResortKyber);
      for (const p of keys.preKeys ?? []) stored.preKeys.set(p.id, copyKey(p));
      for (const p of keys.kyberPreKeys ?? []) stored.kyberPreKeys.set(p.id, copySigned(p));
    },

    async claimKeys(
      users: string | readonly string[],
      device?: string,
      options?: ClaimOptions,
    ): Promise<KeyBundle[]> {
      check('claimKeys');
      // Synchronous from here on: no other claim can run between two users of this one.
      const out: KeyBundle[] = [];
      for (const user of claimedUsers(users)) {
        for (const id of devicesOf(user)) {
          if (device !== undefined && id !== device) continue;
          const k = data.keys.get(deviceKey({ user, device: id }));
          if (k) out.push(claimOne(user, id, k, options?.oneTime?.(id, user) ?? true));
        }
      }
      return out;
    },

    async setPushToken(device: DeviceAddress, token: PushToken | undefined): Promise<void> {
      check('setPushToken');
      const k = deviceKey(device);
      if (!token) data.pushTokens.delete(k);
      else if (devicesOf(device.user).includes(device.device)) data.pushTokens.set(k, { ...token });
    },

    async pushToken(device: DeviceAddress): Promise<PushToken | undefined> {
      check('pushToken');
      const t = data.pushTokens.get(deviceKey(device));
      return t && { ...t };
    },

    async inboxSize(): Promise<number> {
      check('inboxSize');
      let n = 0;
      for (const inbox of data.inboxes.values()) n += inbox.entries.size;
      return n;
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
      const actions = (data.actions ??= new Map());
      const win = actionWindow(now, windowMs);
      return users.map((user) => {
        const k = orderedKey(kind, user);
        const c = actions.get(k);
        const n = c && c.win === win ? c.n + 1 : 1;
        actions.set(k, { win, n });
        return n;
      });
    },

    async keyCount(device: DeviceAddress): Promise<{ preKeys: number; kyberPreKeys: number } | undefined> {
      check('keyCount');
      const k = data.keys.get(deviceKey(device));
      return k && { preKeys: k.preKeys.size, kyberPreKeys: k.kyberPreKeys.size };
    },

    async close(): Promise<void> {},
  };
}
