/**
 * The in-memory {@link ServerStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is a
 * restart after a crash) and a `failWhen` fault switch.
 * @packageDocumentation
 */
import type {
  AppendInput,
  AppendOutcome,
  DeviceAddress,
  EntryStatus,
  InboxEntry,
  NotifyResult,
  ServerStore,
} from '../store.js';

/**
 * Opaque durable state of a memory server store; a new store over the same state is a "re-open
 * after a crash". Its contents are private to this module and may change between versions.
 */
export interface MemoryServerState {
  /** Brand that keeps other objects from passing as a state; nothing else is public. */
  readonly kind: 'postbox.memory-server-state';
}

/** The operations the {@link MemoryServerStoreOptions.failWhen} switch can fail. */
export type ServerStoreOp = 'registerDevice' | 'devices' | 'append' | 'readInbox' | 'ack' | 'expire';

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
}

/** A committed message: its body is kept while `refs` inbox entries point at it. */
interface StoredMessage {
  from: DeviceAddress;
  id: string;
  to: string;
  seq: number;
  ts: number;
  body: Uint8Array;
  /** Inbox entries referencing this message. */
  refs: number;
  /** A device of the recipient user (`to`) has acked it: `delivered` was produced. */
  acked: boolean;
}

type StoredEntry =
  | { kind: 'msg'; ts: number; message: string }
  | { kind: 'status'; ts: number; status: EntryStatus; ids: string[]; by: string };

interface Inbox {
  /** Last offset handed out; never decreases, so offsets are not reused after deletes. */
  last: number;
  /** Entries by offset; inserted in increasing offset order, so iteration is offset order. */
  entries: Map<number, StoredEntry>;
}

interface ServerData extends MemoryServerState {
  /** user → device ids in registration order. */
  devices: Map<string, string[]>;
  /** device key → inbox. */
  inboxes: Map<string, Inbox>;
  /** dedupe key → message still referenced by some inbox. */
  messages: Map<string, StoredMessage>;
  /** dedupe key → original commit time (messages and receipts). */
  dedupe: Map<string, number>;
}

/** Creates an empty state for {@link memoryServerStore}. */
export function createMemoryServerState(): MemoryServerState {
  const data: ServerData = {
    kind: 'postbox.memory-server-state',
    devices: new Map(),
    inboxes: new Map(),
    messages: new Map(),
    dedupe: new Map(),
  };
  return data;
}

// Length-prefixed so that no two different tuples share a key.
const deviceKey = (d: DeviceAddress): string => `${d.user.length}:${d.user}${d.device}`;
const dedupeKey = (from: DeviceAddress, id: string): string =>
  `${from.user.length}:${from.user}${from.device.length}:${from.device}${id}`;

/** Collects devices that got new entries, each once, in first-seen order. */
class NotifySet {
  private readonly seen = new Set<string>();
  readonly list: DeviceAddress[] = [];
  add(d: DeviceAddress): void {
    const k = deviceKey(d);
    if (this.seen.has(k)) return;
    this.seen.add(k);
    this.list.push({ user: d.user, device: d.device });
  }
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
): ServerStore & { readonly name: 'memory' } {
  const data = (options.state ?? createMemoryServerState()) as ServerData;
  const failWhen = options.failWhen;

  function check(op: ServerStoreOp): void {
    if (failWhen?.(op)) throw new Error(`memory server store: injected failure in ${op}`);
  }

  function devicesOf(user: string): string[] {
    return data.devices.get(user) ?? [];
  }

  function push(device: DeviceAddress, entry: StoredEntry): void {
    const k = deviceKey(device);
    let inbox = data.inboxes.get(k);
    if (!inbox) data.inboxes.set(k, (inbox = { last: 0, entries: new Map() }));
    inbox.entries.set(++inbox.last, entry);
  }

  /** Every device of `to` plus the sender user's other devices, each once. */
  function recipients(from: DeviceAddress, to: string): DeviceAddress[] {
    const out = new NotifySet();
    for (const device of devicesOf(to)) out.add({ user: to, device });
    for (const device of devicesOf(from.user)) out.add({ user: from.user, device });
    // The sending device already has what it sent, also for a note to its own user.
    return out.list.filter((d) => d.user !== from.user || d.device !== from.device);
  }

  function commit(item: AppendInput, now: number): AppendOutcome {
    const key = dedupeKey(item.from, item.id);
    const original = data.dedupe.get(key);
    if (original !== undefined) return { ok: true, ts: original, duplicate: true, notify: [] };
    if (devicesOf(item.to).length === 0) return { ok: false, code: 'unknown_recipient' };
    const targets = recipients(item.from, item.to);
    data.dedupe.set(key, now);
    if (item.kind === 'msg') {
      if (targets.length > 0) {
        data.messages.set(key, {
          from: { user: item.from.user, device: item.from.device },
          id: item.id,
          to: item.to,
          seq: item.seq,
          ts: now,
          body: new Uint8Array(item.body),
          refs: targets.length,
          acked: false,
        });
      }
      for (const d of targets) push(d, { kind: 'msg', ts: now, message: key });
    } else {
      for (const d of targets) {
        push(d, { kind: 'status', ts: now, status: 'read', ids: [...item.ids], by: item.from.user });
      }
    }
    return { ok: true, ts: now, duplicate: false, notify: targets };
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
  ): void {
    for (const g of groups.values()) {
      for (const device of devicesOf(g.user)) {
        const d = { user: g.user, device };
        push(d, { kind: 'status', ts: now, status, ids: [...g.ids], by: g.by });
        notify.add(d);
      }
    }
  }

  function toEntry(offset: number, e: StoredEntry): InboxEntry | undefined {
    if (e.kind === 'status') {
      return { offset, kind: 'status', status: e.status, ids: [...e.ids], by: e.by, ts: e.ts };
    }
    const m = data.messages.get(e.message);
    if (!m) return undefined; // unreachable while refs are counted right
    return {
      offset,
      kind: 'msg',
      id: m.id,
      from: { user: m.from.user, device: m.from.device },
      to: m.to,
      seq: m.seq,
      ts: m.ts,
      body: new Uint8Array(m.body),
    };
  }

  return {
    name: 'memory',

    async registerDevice(device: DeviceAddress, _now: number): Promise<void> {
      check('registerDevice');
      const list = data.devices.get(device.user);
      if (!list) data.devices.set(device.user, [device.device]);
      else if (!list.includes(device.device)) list.push(device.device);
    },

    async devices(user: string): Promise<string[]> {
      check('devices');
      return [...devicesOf(user)];
    },

    async append(batch: AppendInput[], now: number): Promise<AppendOutcome[]> {
      check('append');
      return batch.map((item) => commit(item, now));
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
      const inbox = data.inboxes.get(deviceKey(device));
      const notify = new NotifySet();
      if (!inbox) return { count: 0, notify: [] };
      let count = 0;
      // sender user → ids newly delivered to this (recipient) user
      const delivered = new Map<string, { user: string; by: string; ids: string[] }>();
      for (const offset of offsets) {
        const e = inbox.entries.get(offset);
        if (!e) continue;
        inbox.entries.delete(offset);
        count++;
        if (e.kind !== 'msg') continue;
        const m = unref(e.message);
        if (!m || m.acked || m.to !== device.user || m.from.user === device.user) continue;
        m.acked = true;
        let g = delivered.get(m.from.user);
        if (!g) delivered.set(m.from.user, (g = { user: m.from.user, by: device.user, ids: [] }));
        g.ids.push(m.id);
      }
      fanOut(delivered, 'delivered', now, notify);
      return { count, notify: notify.list };
    },

    async expire(cutoff: number, now: number): Promise<NotifyResult> {
      check('expire');
      const notify = new NotifySet();
      let count = 0;
      // (sender user, recipient user) → ids of undelivered messages, each message once
      const expired = new Map<string, { user: string; by: string; ids: string[] }>();
      const told = new Set<string>();
      for (const inbox of data.inboxes.values()) {
        for (const [offset, e] of inbox.entries) {
          if (e.ts >= cutoff) continue;
          inbox.entries.delete(offset);
          count++;
          if (e.kind !== 'msg') continue;
          const m = unref(e.message);
          if (!m || m.acked || m.to === m.from.user || told.has(e.message)) continue;
          told.add(e.message);
          const gk = `${m.from.user.length}:${m.from.user}${m.to}`;
          let g = expired.get(gk);
          if (!g) expired.set(gk, (g = { user: m.from.user, by: m.to, ids: [] }));
          g.ids.push(m.id);
        }
      }
      for (const [key, ts] of data.dedupe) if (ts < cutoff) data.dedupe.delete(key);
      fanOut(expired, 'expired', now, notify);
      return { count, notify: notify.list };
    },

    async close(): Promise<void> {},
  };
}
