/**
 * A {@link StoreDriver} over plain record tables in one map (table → key → record), copying every
 * record in and out and undoing a failed unit from a journal: the cache of {@link backendDriver},
 * and, over a map that outlives it, a driver in its own right (the tests run the conformance
 * suite over it to check that the kit writes back everything it changes).
 *
 * Keys: user and group ids as they are; a device is `JSON.stringify([user, device])`; an inbox
 * entry is `<device>#<offset, 16 digits>`, so a device's entries share the prefix `<device>#` and
 * sort by offset. Tables: `devices`, `heads`, `entries`, `messages`, `dedupe`, `sent`, `groups`,
 * `userGroups`, `invites`, `consents`, `lastSeen`, `keys`, `pushTokens`, `actions`.
 * @internal
 * @packageDocumentation
 */
import type { BeforeWrite, DeviceAddress } from '../store.js';
import type {
  DriverEntry,
  DriverInbox,
  DriverTable,
  ExpiringTable,
  InboxHead,
  StoreDriver,
} from './driver.js';

/** Record tables: table name → key → record. */
export type RecordStorage = Map<string, Map<string, unknown>>;

const deviceKey = (d: DeviceAddress): string => JSON.stringify([d.user, d.device]);
const copy = <T>(v: T): T => structuredClone(v);

/**
 * What a cache in front of a backend knows: whether a record or a scan is loaded (if not, it
 * notes the miss and the read answers nothing), and which records a unit wrote.
 */
export interface CacheGuard {
  has(space: string, key: string): boolean;
  scanned(space: string, prefix: string): boolean;
  wrote(space: string, key: string): void;
}

/**
 * A {@link StoreDriver} over record tables held in `storage` (table → key → record), every record
 * copied in and out, each unit an undo journal. With a `guard`, the tables are a cache: a read
 * of what the guard says is not loaded answers nothing.
 */
export function recordTables(
  storage: RecordStorage,
  hook: BeforeWrite = () => {},
  guard?: CacheGuard,
): StoreDriver {
  const space = (name: string): Map<string, unknown> => {
    let m = storage.get(name);
    if (!m) storage.set(name, (m = new Map()));
    return m;
  };
  /** The unit's undo journal: (space, key) → the value before the unit's first write, or absent. */
  let journal: Map<string, { name: string; key: string; had: boolean; old: unknown }> | undefined;
  function write(name: string, key: string, value: unknown, del = false): void {
    hook(del ? 'delete' : name);
    guard?.wrote(name, key);
    const m = space(name);
    const jk = `${name}\u0000${key}`;
    if (journal && !journal.has(jk)) journal.set(jk, { name, key, had: m.has(key), old: m.get(key) });
    if (del) m.delete(key);
    else m.set(key, copy(value));
  }
  const read = <V>(name: string, key: string): V | undefined => {
    if (guard && !guard.has(name, key)) return undefined;
    const v = space(name).get(key);
    return v === undefined ? undefined : copy(v as V);
  };
  function table<V>(name: string): DriverTable<string, V> {
    return {
      get: (k) => read<V>(name, k),
      set: (k, v) => write(name, k, v),
      delete: (k) => write(name, k, undefined, true),
    };
  }
  function byDevice<V>(name: string): DriverTable<DeviceAddress, V> {
    const t = table<V>(name);
    return {
      get: (d) => t.get(deviceKey(d)),
      set: (d, v) => t.set(deviceKey(d), v),
      delete: (d) => t.delete(deviceKey(d)),
    };
  }
  /** `keep` answers what is left of a record at the cutoff: nothing, the same, or a new value. */
  function expiring<V>(
    name: string,
    keep: (v: V, cutoff: number) => V | undefined | 'same',
  ): ExpiringTable<V> {
    return {
      ...table<V>(name),
      dropOlder(cutoff) {
        if (guard && !guard.scanned(name, '')) return;
        for (const [k, v] of [...space(name)]) {
          const kept = keep(copy(v as V), cutoff);
          if (kept === undefined) write(name, k, undefined, true);
          else if (kept !== 'same') write(name, k, kept);
        }
      },
    };
  }
  const entryKey = (d: DeviceAddress, offset: number) =>
    `${deviceKey(d)}#${String(offset).padStart(16, '0')}`;
  function handle(device: DeviceAddress, head: InboxHead): DriverInbox {
    const prefix = `${deviceKey(device)}#`;
    return {
      device: copy(device),
      head,
      get: (offset) => read<DriverEntry>('entries', entryKey(device, offset)),
      put: (offset, entry) => write('entries', entryKey(device, offset), entry),
      delete: (offset) => write('entries', entryKey(device, offset), undefined, true),
      *after(offset) {
        if (guard && !guard.scanned('entries', prefix)) return;
        // A range scan over the ordered keys, as an engine with sorted keys makes it.
        const keys = [...space('entries').keys()].filter((k) => k.startsWith(prefix)).sort();
        for (const k of keys) {
          const at = Number(k.slice(prefix.length));
          const e = read<DriverEntry>('entries', k);
          if (at > offset && e) yield [at, e];
        }
      },
      save: () => write('heads', deviceKey(device), head),
    };
  }
  function inbox(device: DeviceAddress, create: true): DriverInbox;
  function inbox(device: DeviceAddress, create?: false): DriverInbox | undefined;
  function inbox(device: DeviceAddress, create?: boolean): DriverInbox | undefined {
    const head = read<InboxHead>('heads', deviceKey(device));
    if (head) return handle(device, head);
    if (!create) return undefined;
    const fresh: InboxHead = { last: 0, count: 0, bytes: 0 };
    write('heads', deviceKey(device), fresh);
    return handle(device, fresh);
  }
  return {
    atomically<T>(fn: () => T): T {
      if (journal) return fn(); // inside a unit already
      const undo = (journal = new Map());
      try {
        const out = fn();
        journal = undefined;
        return out;
      } catch (e) {
        for (const j of [...undo.values()].reverse()) {
          if (j.had) space(j.name).set(j.key, j.old);
          else space(j.name).delete(j.key);
        }
        journal = undefined;
        throw e;
      }
    },
    devices: table('devices'),
    inbox,
    dropInbox(device) {
      const prefix = `${deviceKey(device)}#`;
      if (guard && !guard.scanned('entries', prefix)) return;
      for (const k of [...space('entries').keys()])
        if (k.startsWith(prefix)) write('entries', k, undefined, true);
      write('heads', deviceKey(device), undefined, true);
    },
    *inboxes() {
      if (guard && !guard.scanned('heads', '')) return;
      for (const [k, head] of [...space('heads')]) {
        const [user, device] = JSON.parse(k) as [string, string];
        yield handle({ user, device }, copy(head as InboxHead));
      }
    },
    messages: table('messages'),
    dedupe: expiring<number>('dedupe', (ts, cutoff) => (ts < cutoff ? undefined : 'same')),
    sent: expiring('sent', (records: { ts: number }[], cutoff) => {
      const kept = records.filter((r) => r.ts >= cutoff);
      return kept.length === records.length ? 'same' : kept.length > 0 ? kept : undefined;
    }) as StoreDriver['sent'],
    events: expiring<{ ts: number }>('events', (e, cutoff) =>
      e.ts < cutoff ? undefined : 'same',
    ) as StoreDriver['events'],
    groups: table('groups'),
    userGroups: table('userGroups'),
    invites: table('invites'),
    invitesOf(user) {
      if (guard && !guard.scanned('invites', '')) return 0;
      let n = 0;
      for (const users of space('invites').values()) if ((users as Set<string>).has(user)) n++;
      return n;
    },
    consents: table('consents'),
    lastSeen: table('lastSeen'),
    keys: byDevice('keys'),
    pushTokens: byDevice('pushTokens'),
    actions: table('actions'),
  };
}
