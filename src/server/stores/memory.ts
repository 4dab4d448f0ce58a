/**
 * The in-memory {@link ServerStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is a
 * restart after a crash) and a `failWhen` fault switch.
 *
 * It is the store kit's worked example twice over: its rules come from the kit alone (a lint rule
 * keeps it so), and it is {@link driverStore} over a {@link StoreDriver} of plain maps, so all
 * that is left here is the storage: tables as maps, one atomic unit as "run synchronously" (or,
 * with a fault hook, "copy the state first and put the copy back on a throw").
 * @packageDocumentation
 */
import { addressKey as deviceKey } from '../address.js';
import type { PushToken } from '../push/types.js';
import type { BeforeWrite, DeviceAddress, ServerStore } from '../store.js';
import {
  driverStore,
  type DriverEntry,
  type DriverGroup,
  type DriverInbox,
  type DriverKeys,
  type DriverMessage,
  type DriverTable,
  type ExpiringTable,
  type InboxHead,
  type SentAt,
  type StoredEvent,
  type StoreDriver,
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
   * Fault hook for tests (see {@link BeforeWrite}), called before each change to the inboxes,
   * messages and dedupe records (`inbox`, `delete`, `messages`, `dedupe`) in the writing calls
   * (append, ack, expire, registering and unregistering). With it, each such call copies the
   * state first and puts the copy back when the hook throws, so a failed call changes nothing;
   * without it nothing is copied.
   * @default none
   */
  beforeWrite?: BeforeWrite;
}

/** One device's inbox in the maps: its address, counters and entries (in offset order). */
interface MapInbox {
  device: DeviceAddress;
  head: InboxHead;
  entries: Map<number, DriverEntry>;
}

interface ServerData extends MemoryServerState {
  devices: Map<string, string[]>;
  /** device key → inbox. */
  inboxes: Map<string, MapInbox>;
  messages: Map<string, DriverMessage>;
  dedupe: Map<string, number>;
  sent: Map<string, SentAt[]>;
  events: Map<string, StoredEvent>;
  groups: Map<string, DriverGroup>;
  userGroups: Map<string, Set<string>>;
  invites: Map<string, Set<string>>;
  consents: Map<string, true>;
  lastSeen: Map<string, number>;
  /** device key → keys. */
  keys: Map<string, DriverKeys>;
  /** device key → push token. */
  pushTokens: Map<string, PushToken>;
  actions: Map<string, { win: number; n: number }>;
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
    events: new Map(),
    groups: new Map(),
    userGroups: new Map(),
    invites: new Map(),
    consents: new Map(),
    lastSeen: new Map(),
    keys: new Map(),
    pushTokens: new Map(),
    actions: new Map(),
  };
  return data;
}

const LABEL = 'memory server store';
const noHook: BeforeWrite = () => {};

/** The fields of the state that are plain maps keyed by strings. */
type Tables = {
  [K in keyof ServerData as ServerData[K] extends Map<string, unknown> ? K : never]: ServerData[K];
};
type Row<K extends keyof Tables> = Tables[K] extends Map<string, infer V> ? V : never;

/**
 * One map of the state as a driver table, looked up on every call (a failed call puts back a
 * copy of the whole state); `hook` is asked before each change.
 */
function table<K extends keyof Tables>(
  data: ServerData,
  name: K,
  hook?: BeforeWrite,
): DriverTable<string, Row<K>> {
  const map = () => data[name] as unknown as Map<string, Row<K>>;
  if (!hook)
    return {
      get: (k) => map().get(k),
      set: (k, v) => void map().set(k, v),
      delete: (k) => void map().delete(k),
    };
  return {
    get: (k) => map().get(k),
    set: (k, v) => (hook(name), void map().set(k, v)),
    delete: (k) => (hook('delete'), void map().delete(k)),
  };
}

/** A map of the state keyed by device address. */
function deviceTable<K extends 'keys' | 'pushTokens'>(
  data: ServerData,
  name: K,
): DriverTable<DeviceAddress, Row<K>> {
  const map = () => data[name] as unknown as Map<string, Row<K>>;
  return {
    get: (d) => map().get(deviceKey(d)),
    set: (d, v) => void map().set(deviceKey(d), v),
    delete: (d) => void map().delete(deviceKey(d)),
  };
}

/** The driver's view of one inbox of the maps (the records themselves: changes are live). */
class InboxView implements DriverInbox {
  constructor(
    private readonly inbox: MapInbox,
    private readonly hook: BeforeWrite,
  ) {}
  get device(): DeviceAddress {
    return this.inbox.device;
  }
  get head(): InboxHead {
    return this.inbox.head;
  }
  get(offset: number): DriverEntry | undefined {
    return this.inbox.entries.get(offset);
  }
  put(offset: number, entry: DriverEntry): void {
    this.hook('inbox');
    this.inbox.entries.set(offset, entry);
  }
  delete(offset: number): void {
    this.hook('delete');
    this.inbox.entries.delete(offset);
  }
  *after(offset: number): Iterable<[number, DriverEntry]> {
    for (const pair of this.inbox.entries) if (pair[0] > offset) yield pair;
  }
  save(): void {}
}

/** The maps of a state as a {@link StoreDriver}. */
function mapDriver(data: ServerData, beforeWrite: BeforeWrite | undefined): StoreDriver {
  const hook = beforeWrite ?? noHook;
  const view = (inbox: MapInbox) => new InboxView(inbox, hook);
  const dedupe = table(data, 'dedupe', beforeWrite) as ExpiringTable<number>;
  dedupe.dropOlder = (cutoff) => {
    for (const [key, ts] of data.dedupe) if (ts < cutoff) data.dedupe.delete(key);
  };
  const sent = table(data, 'sent') as ExpiringTable<SentAt[]>;
  sent.dropOlder = (cutoff) => {
    for (const [key, records] of data.sent) {
      if (!records.some((r) => r.ts < cutoff)) continue;
      const kept = records.filter((r) => r.ts >= cutoff);
      if (kept.length === 0) data.sent.delete(key);
      else data.sent.set(key, kept);
    }
  };
  const events = table(data, 'events') as ExpiringTable<StoredEvent>;
  events.dropOlder = (cutoff) => {
    for (const [key, e] of data.events) if (e.ts < cutoff) data.events.delete(key);
  };
  function inbox(device: DeviceAddress, create: true): DriverInbox;
  function inbox(device: DeviceAddress, create?: false): DriverInbox | undefined;
  function inbox(device: DeviceAddress, create?: boolean): DriverInbox | undefined {
    const k = deviceKey(device);
    let found = data.inboxes.get(k);
    if (!found && create) {
      found = {
        device: { user: device.user, device: device.device },
        head: { last: 0, count: 0, bytes: 0 },
        entries: new Map(),
      };
      data.inboxes.set(k, found);
    }
    return found && view(found);
  }
  return {
    atomically<T>(fn: () => T): T {
      if (!beforeWrite) return fn();
      const saved = structuredClone(data);
      try {
        return fn();
      } catch (e) {
        Object.assign(data, saved);
        throw e;
      }
    },
    devices: table(data, 'devices'),
    inbox,
    dropInbox: (device) => void data.inboxes.delete(deviceKey(device)),
    *inboxes() {
      for (const found of data.inboxes.values()) yield view(found);
    },
    messages: table(data, 'messages', beforeWrite),
    dedupe,
    sent,
    events,
    groups: table(data, 'groups'),
    userGroups: table(data, 'userGroups'),
    invites: table(data, 'invites'),
    invitesOf(user) {
      let n = 0;
      for (const users of data.invites.values()) if (users.has(user)) n++;
      return n;
    },
    consents: table(data, 'consents'),
    lastSeen: table(data, 'lastSeen'),
    keys: deviceTable(data, 'keys'),
    pushTokens: deviceTable(data, 'pushTokens'),
    actions: table(data, 'actions'),
  };
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
  const store = driverStore(mapDriver(data, options.beforeWrite), {
    name: 'memory',
    label: LABEL,
    ...(options.quotas ? { quotas: options.quotas } : {}),
    ...(failWhen
      ? {
          before: (op) => {
            if (failWhen(op as ServerStoreOp)) throw new Error(`${LABEL}: injected failure in ${op}`);
          },
        }
      : {}),
  });
  return store as typeof store & { readonly name: 'memory' };
}
