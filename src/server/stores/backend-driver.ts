/**
 * {@link backendDriver}: a {@link StoreDriver} whose records live in a backend reached over the
 * network (Redis, DynamoDB, Cassandra, FoundationDB), for {@link driverStore}. The integrator
 * writes a {@link RemoteBackend} of three calls; this module serves each unit from a cache,
 * notes what the cache lacks, loads it, and commits the unit's writes on the backend's condition
 * that nothing the unit read has changed.
 * @packageDocumentation
 */
import type { BeforeWrite } from '../store.js';
import type { StoreDriver } from './driver.js';
import { recordTables, type CacheGuard, type RecordStorage } from './record-tables.js';

const sep = '\u0000';

/**
 * Where a {@link backendDriver}'s records live: reads that are watched (a later `commit` fails
 * if a record read, or a scan's set of keys, changed meanwhile) and one conditional commit. The
 * records are plain values with maps, sets and byte arrays in them (msgpackr's `structuredClone`
 * mode keeps them); the tables and key shapes are those of the record tables: a device's inbox
 * entries are the keys of table `entries` with the prefix `JSON.stringify([user, device]) + '#'`,
 * and every other scan is of a whole table (`heads`, `invites`, `dedupe`, `sent`).
 */
export interface RemoteBackend {
  /** The records at these (table, key) pairs, undefined where absent; each is watched. */
  get(keys: readonly (readonly [string, string])[]): Promise<unknown[]>;
  /** Every record of `table` whose key starts with `prefix`; the scan is watched. */
  scan(table: string, prefix: string): Promise<[string, unknown][]>;
  /**
   * Applies the writes (undefined deletes) if nothing watched changed, and forgets the watches.
   * @returns false, writing nothing, when something watched changed.
   */
  commit(writes: readonly (readonly [string, string, unknown])[]): Promise<boolean>;
}

/** Options of {@link backendDriver}. */
export interface BackendDriverOptions {
  /**
   * Fault hook for tests: asked for each record a unit writes, before the commit; a throw fails
   * the call, writing nothing.
   */
  beforeWrite?: BeforeWrite;
}

/**
 * A {@link StoreDriver} whose records live in `backend`: each unit runs on a cache of what is
 * loaded, a read of anything else answers nothing and is noted (the kit then loads it and runs
 * the unit again), and a finished unit's writes go to the backend in one conditional commit
 * (the kit runs the unit again when the condition failed). The cache is forgotten after every
 * commit, as a stateless node's would be, so every call reads what the backend holds now.
 *
 * @example
 * ```ts
 * const store = driverStore(backendDriver(myDynamoBackend(table)), { name: 'dynamo' });
 * ```
 */
export function backendDriver(backend: RemoteBackend, options: BackendDriverOptions = {}): StoreDriver {
  const hook = options.beforeWrite ?? (() => {});
  const cache: RecordStorage = new Map();
  const loaded = new Set<string>();
  /** Table → the key prefixes scanned into the cache (every record under one is loaded). */
  const scans = new Map<string, string[]>();
  const wantKeys = new Set<string>();
  const wantScans = new Set<string>();
  let dirty = new Set<string>();
  /** Records a unit wrote without having loaded them: unknown again if it rolls back. */
  let blind = new Set<string>();
  const scannedFor = (table: string, key: string) =>
    scans.get(table)?.some((prefix) => key.startsWith(prefix)) === true;
  const guard: CacheGuard = {
    has(table, key) {
      const k = table + sep + key;
      if (loaded.has(k) || scannedFor(table, key)) return true;
      wantKeys.add(k);
      return false;
    },
    scanned(table, prefix) {
      const k = table + sep + prefix;
      if (scannedFor(table, prefix)) return true;
      wantScans.add(k);
      return false;
    },
    wrote(table, key) {
      const k = table + sep + key;
      if (!loaded.has(k) && !scannedFor(table, key)) blind.add(k);
      loaded.add(k);
      dirty.add(k);
    },
  };
  const cached = (name: string) => {
    let m = cache.get(name);
    if (!m) cache.set(name, (m = new Map()));
    return m;
  };
  function forget(): void {
    cache.clear();
    loaded.clear();
    scans.clear();
    dirty = new Set();
  }
  const local = recordTables(cache, () => {}, guard);
  return {
    ...local,
    atomically<T>(fn: () => T): T {
      dirty = new Set();
      blind = new Set();
      try {
        return local.atomically(fn);
      } catch (e) {
        // Rolled back: what the unit wrote blind is the remote's again, to be loaded when read.
        for (const k of blind) loaded.delete(k);
        dirty = new Set();
        throw e;
      }
    },
    remote: {
      missed: () => wantKeys.size > 0 || wantScans.size > 0,
      async fetch() {
        const keys = [...wantKeys].map((k) => k.split(sep) as [string, string]);
        const scanned = [...wantScans];
        wantKeys.clear();
        wantScans.clear();
        try {
          const values = await backend.get(keys);
          keys.forEach(([name, key], i) => {
            if (values[i] === undefined) cached(name).delete(key);
            else cached(name).set(key, values[i]);
            loaded.add(name + sep + key);
          });
          for (const k of scanned) {
            const [name, prefix] = k.split(sep) as [string, string];
            for (const [key, v] of await backend.scan(name, prefix)) cached(name).set(key, v);
            scans.set(name, [...(scans.get(name) ?? []), prefix]);
          }
        } catch (e) {
          forget(); // the next call starts cold
          throw e;
        }
      },
      async flush() {
        const writes = [...dirty].map((k) => {
          const [name, key] = k.split(sep) as [string, string];
          return [name, key, cached(name).get(key)] as const;
        });
        try {
          for (const [name] of writes) hook(name);
        } catch (e) {
          forget();
          await backend.commit([]); // let go of the watches, write nothing
          throw e;
        }
        try {
          return await backend.commit(writes);
        } finally {
          forget();
        }
      },
    },
  };
}
