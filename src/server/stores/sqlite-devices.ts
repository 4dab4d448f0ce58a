/**
 * The SQLite store's device directory in memory: each user's devices as (row id, name), read from
 * `devices` once and kept, so the two or three device lists a 1:1 message's life asks for (the
 * recipient's, the sender's, the sender's again for its ✓✓) and an ack's device row cost no query.
 *
 * Why it stays right: this store changes `devices` in three places only, each of which calls
 * {@link DeviceDirectory.forget} for the user inside its transaction; another connection's commit
 * (another store over the same file: several nodes on one database) changes SQLite's
 * `PRAGMA data_version`, which the store reads at the start of every write transaction and before
 * a read outside one ({@link DeviceDirectory.sync}); and a read made inside a transaction that then
 * fails may have seen rows that were rolled back, so a failed transaction calls
 * {@link DeviceDirectory.clear}.
 *
 * It also keeps the inbox heads it has read (`last_offset`, `entries`, `bytes` of a device row),
 * under the same rules: only the store's writer changes those columns (`flush`, which hands each
 * change to {@link DeviceDirectory.moved}), and every rule above that drops the lists drops the
 * heads too (a removed device's row id may be given to the next new device). A one-message
 * append then reads no device row at all.
 * @internal
 * @packageDocumentation
 */

/** A device of a user: its row id and its name. */
export interface DeviceRef {
  readonly id: number;
  readonly device: string;
}

/** A device row's inbox head: its offset counter and its inbox's usage. */
export interface InboxHeadRow {
  last_offset: number;
  entries: number;
  bytes: number;
}

/** Most users whose devices are kept; past it the directory starts over (a bound, not a cache policy). */
const MAX_USERS = 100_000;
/** Most inbox heads kept; past it they start over. */
const MAX_HEADS = 200_000;

/** See the module comment. */
export interface DeviceDirectory {
  /** The user's devices in registration order (row id). Shared: callers must not change it. */
  of(user: string): readonly DeviceRef[];
  /** The row id of one device, or undefined when it is not registered. */
  id(user: string, device: string): number | undefined;
  /** A device of `user` was added, removed or renamed: its list is read again when next asked. */
  forget(user: string): void;
  /** A write transaction failed: everything is read again. */
  clear(): void;
  /**
   * `version` is the connection's `PRAGMA data_version` now: when it moved since the last call,
   * another connection committed, and everything is read again.
   */
  sync(version: number): void;
  /** A device's inbox head as committed or written in the running transaction; read when not kept. */
  head(dev: number): InboxHeadRow;
  /**
   * The writer wrote a device's head: `last` its counter (undefined: unchanged), `entries` and
   * `bytes` what it added (negative: removed).
   */
  moved(dev: number, last: number | undefined, entries: number, bytes: number): void;
}

/**
 * A directory over `read`, the query of one user's devices (in any order), and `readHead`, the
 * query of one device row's head.
 */
export function deviceDirectory(
  read: (user: string) => DeviceRef[],
  readHead: (dev: number) => InboxHeadRow,
): DeviceDirectory {
  const lists = new Map<string, readonly DeviceRef[]>();
  const heads = new Map<number, InboxHeadRow>();
  let seen: number | undefined;
  const of = (user: string): readonly DeviceRef[] => {
    let list = lists.get(user);
    if (list === undefined) {
      const rows = read(user);
      list = rows.length > 1 ? rows.sort((a, b) => a.id - b.id) : rows;
      if (lists.size >= MAX_USERS) lists.clear();
      lists.set(user, list);
    }
    return list;
  };
  return {
    of,
    id(user, device) {
      for (const r of of(user)) if (r.device === device) return r.id;
      return undefined;
    },
    forget(user) {
      lists.delete(user);
      heads.clear();
    },
    clear() {
      lists.clear();
      heads.clear();
    },
    sync(version) {
      if (version !== seen) {
        lists.clear();
        heads.clear();
      }
      seen = version;
    },
    head(dev) {
      let h = heads.get(dev);
      if (h === undefined) {
        const r = readHead(dev);
        h = { last_offset: r.last_offset, entries: r.entries, bytes: r.bytes };
        if (heads.size >= MAX_HEADS) heads.clear();
        heads.set(dev, h);
      }
      return h;
    },
    moved(dev, last, entries, bytes) {
      const h = heads.get(dev);
      if (h === undefined) return;
      if (last !== undefined) h.last_offset = last;
      h.entries += entries;
      h.bytes += bytes;
    },
  };
}
