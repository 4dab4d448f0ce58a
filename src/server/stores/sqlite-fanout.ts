/**
 * Sliced fan-out for the SQLite server store (issue 22, group-spam): a group message to many
 * devices is written in transactions of a bounded number of inbox entries instead of one long
 * one, so the event loop, and other senders' commits, run between them. A 1,023-row transaction
 * held the loop 7–10 ms; a 1:1 message that came meanwhile waited for all of it.
 *
 * How an item is sliced (see `slicedAppend` on `StoreCapabilities`):
 * - its first transaction is the whole item as before (dedupe record, body with `refs` counting
 *   every planned entry, quota placement, `inbox_full` notices) except that it writes only the
 *   first slice of entries, and records the devices still to write in a `fanouts` row (its cursor
 *   in `fanout_done`): the recipients are fixed then, as for an unsliced item;
 * - each later transaction reads the cursor, writes the next slice (each entry takes
 *   its device's next offset then, so no reader can skip it), and moves the cursor or, with the
 *   last slice, deletes the row. Cursor and entries commit together, so a crash between slices
 *   leaves every device either written once or still listed: resumed, never written twice;
 * - a device removed between slices gets nothing, and the body's `refs` drop by as many;
 * - the entries still to write count against their devices' inbox quotas (`reserved`) while the
 *   item is in flight, so a send placed between slices sees them as the item's own placement did.
 * - before each slice the store waits for a WAL flush under way to end (`paceSlice` in sqlite.ts):
 *   the flush a send committed between slices waits for then carries at most one slice.
 *
 * A pending row is finished when the store opens, or by the sender's resend (its dedupe hit),
 * which first waits for a run of the same item under way in this process.
 * @internal
 * @packageDocumentation
 */
import type { DeviceAddress } from '../store.js';
import type { InboxUsage } from '../quotas.js';

/**
 * The schema step that adds the pending fan-out rows. The cursor has a table of its own: a slice
 * rewrites only its small row, not the device list (some 6 KB for a full group: pages that every
 * slice would otherwise write to the WAL again).
 */
export const FANOUTS_TABLE = `
  CREATE TABLE fanouts (
    message INTEGER PRIMARY KEY,
    from_user TEXT NOT NULL,
    from_device TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    size INTEGER NOT NULL,
    devs TEXT NOT NULL
  );
  CREATE TABLE fanout_done (
    message INTEGER PRIMARY KEY,
    done INTEGER NOT NULL
  );`;

/** What a slice needs of the store's per-transaction writer (see `writer` in sqlite.ts). */
export interface SliceWriter {
  prime(r: { id: number; last_offset: number }): void;
  next(dev: number, size: number): number;
  flush(): void;
}

/** A prepared statement as the store makes them (with its fault hook). */
interface Statement {
  run(...params: unknown[]): unknown;
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

/** What the slicer needs of the store. */
export interface SlicerDeps {
  q(sql: string): Statement;
  tx<T>(fn: () => T): T;
  writer(): SliceWriter;
  /** Inserts a message entry: (dev, pos, ts, message, own body, size). */
  insertEntry: Statement;
  /** Takes `n` references from a shared body, which goes with its last (the store's one rule). */
  releaseMessage(id: number, n: number): void;
}

/** The part of an item's outcome its later slices extend. */
export interface SlicedOutcome {
  notify: DeviceAddress[];
  offsets?: number[];
}

/** One item in flight: the devices after its first slice, in fan-out order. */
export interface FanoutJob {
  message: number;
  ts: number;
  size: number;
  devs: number[];
  /** Their addresses (unknown for a row found on disk); what written entries add to `outcome`. */
  addrs?: DeviceAddress[];
  outcome?: SlicedOutcome;
  /** The run under way in this process, if any. */
  running?: Promise<void>;
  /** Whether `devs[done…]` are counted in `reserved` (a job this process created). */
  reserving: boolean;
}

interface FanoutRow {
  message: number;
  ts: number;
  size: number;
  devs: string;
}

/** The sliced fan-outs of one store (see the module header). */
export function fanoutSlicer(d: SlicerDeps) {
  const sql = {
    insert: d.q(
      `INSERT INTO fanouts (message, from_user, from_device, msg_id, ts, size, devs)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ),
    start: d.q('INSERT INTO fanout_done (message, done) VALUES (?, 0)'),
    done: d.q('SELECT done FROM fanout_done WHERE message = ?'),
    advance: d.q('UPDATE fanout_done SET done = ? WHERE message = ?'),
    finish: d.q('DELETE FROM fanouts WHERE message = ?'),
    finishDone: d.q('DELETE FROM fanout_done WHERE message = ?'),
    all: d.q('SELECT message, ts, size, devs FROM fanouts ORDER BY message'),
    of: d.q(
      'SELECT message, ts, size, devs FROM fanouts WHERE from_user = ? AND from_device = ? AND msg_id = ?',
    ),
    lastOffset: d.q('SELECT last_offset FROM devices WHERE id = ?'),
  };
  /** Entries and bytes of jobs in flight not yet written, per device. */
  const reserved = new Map<number, InboxUsage>();
  /** Jobs this process knows, by message row id, until their last slice commits. */
  const jobs = new Map<number, FanoutJob>();

  const reserve = (job: FanoutJob, from: number, to: number, sign: 1 | -1): void => {
    for (let i = from; i < to; i++) {
      const dev = job.devs[i]!;
      const r = reserved.get(dev) ?? { entries: 0, bytes: 0 };
      r.entries += sign;
      r.bytes += sign * job.size;
      if (r.entries <= 0) reserved.delete(dev);
      else reserved.set(dev, r);
    }
  };

  const fromRow = (r: FanoutRow): FanoutJob =>
    jobs.get(r.message) ?? {
      message: r.message,
      ts: r.ts,
      size: r.size,
      devs: JSON.parse(r.devs) as number[],
      reserving: false,
    };

  /**
   * Writes the next `max` devices of `job` in the caller's transaction; returns whether the job is
   * complete. The cursor is read here, under the write lock, so two runs never write one device.
   */
  function slice(job: FanoutJob, max: number): { done: number; end: number } {
    const row = sql.done.get(job.message) as { done: number } | undefined;
    if (!row) return { done: job.devs.length, end: job.devs.length };
    const end = Math.min(job.devs.length, row.done + max);
    const w = d.writer();
    let gone = 0;
    const written: Array<[number, number]> = [];
    for (let i = row.done; i < end; i++) {
      const dev = job.devs[i]!;
      const r = sql.lastOffset.get(dev) as { last_offset: number } | undefined;
      if (!r) {
        gone++; // removed between slices: it gets nothing, and the body one reference less
        continue;
      }
      w.prime({ id: dev, last_offset: r.last_offset });
      const offset = w.next(dev, job.size);
      d.insertEntry.run(dev, offset, job.ts, job.message, null, job.size);
      written.push([i, offset]);
    }
    if (gone > 0) d.releaseMessage(job.message, gone);
    if (end === job.devs.length) {
      sql.finish.run(job.message);
      sql.finishDone.run(job.message);
    } else sql.advance.run(end, job.message);
    w.flush();
    const out = job.outcome;
    if (out && job.addrs) {
      for (const [i, offset] of written) {
        out.notify.push(job.addrs[i]!);
        out.offsets?.push(offset);
      }
    }
    return { done: row.done, end };
  }

  /** One slice in its own transaction, with the reservations it wrote released after commit. */
  function step(job: FanoutJob, max: number): boolean {
    const { done, end } = d.tx(() => slice(job, max));
    if (job.reserving) reserve(job, done, end, -1);
    if (end < job.devs.length) return false;
    jobs.delete(job.message);
    return true;
  }

  return {
    /** Reserved (written later) entries and bytes of a device, if any. */
    reserved: (dev: number): InboxUsage | undefined => reserved.get(dev),

    /**
     * Inside the item's first transaction: records the devices after its first slice (the
     * caller wrote that slice). The returned job is in flight once that transaction committed
     * ({@link adopt}); `outcome` gets each later entry's device and offset.
     */
    defer(
      message: number,
      from: DeviceAddress,
      msgId: string,
      ts: number,
      size: number,
      rest: ReadonlyArray<DeviceAddress & { id: number }>,
    ): FanoutJob {
      const devs = rest.map((t) => t.id);
      sql.insert.run(message, from.user, from.device, msgId, ts, size, JSON.stringify(devs));
      sql.start.run(message);
      return {
        message,
        ts,
        size,
        devs,
        addrs: rest.map((t) => ({ user: t.user, device: t.device })),
        reserving: true,
      };
    },

    /** The first transaction committed: `job` is in flight, its unwritten entries reserved. */
    adopt(job: FanoutJob, outcome: SlicedOutcome): void {
      job.outcome = outcome;
      jobs.set(job.message, job);
      reserve(job, 0, job.devs.length, 1);
    },

    /** A duplicate of an item still pending (inside a transaction): its job, or undefined. */
    pendingOf(from: DeviceAddress, msgId: string): FanoutJob | undefined {
      const r = sql.of.get(from.user, from.device, msgId) as FanoutRow | undefined;
      return r && fromRow(r);
    },

    /**
     * Writes the rest of `job`, `max` devices a transaction, yielding to the event loop before
     * each; joins the run under way when there is one. Rejects with the failing slice's error
     * (the job stays pending, on disk and here).
     */
    finish(job: FanoutJob, max: number, pause: () => Promise<void>): Promise<void> {
      const known = jobs.get(job.message) ?? job;
      if (known.running) return known.running;
      jobs.set(known.message, known);
      const run = (async () => {
        for (;;) {
          await pause();
          if (step(known, max)) return;
        }
      })();
      known.running = run;
      const clear = (): void => {
        known.running = undefined;
      };
      run.then(clear, clear);
      return run;
    },

    /** At open: every fan-out a crash (or a failed slice) left pending, written to the end. */
    resumeAll(): number {
      const rows = sql.all.all() as FanoutRow[];
      for (const r of rows) step(fromRow(r), Infinity);
      return rows.length;
    },
  };
}

/** The slicer of one SQLite server store. */
export type FanoutSlicer = ReturnType<typeof fanoutSlicer>;
