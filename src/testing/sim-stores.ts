/**
 * The stores a simulated run uses, whoever wrote them: the fault switch that wraps any store,
 * and the server-store oracle that records what each group message's audience was at its commit.
 * Kept apart from the scenario so an integrator's adapter goes through exactly the same faults
 * and checks as the built-in ones.
 * @packageDocumentation
 */
import type { AppendInput, AppendOutcome, GroupState, ServerStore } from '../server/store.js';
import type { ErrorCode } from '../protocol/errors.js';

/**
 * Wraps `store` so that a call to any of its methods fails, before it reaches the store, when
 * `shouldFail(method)` says so: a failed operation changes nothing, as a store that refused a
 * write. `shouldFail` is asked once per call, at the call, so a seeded decision replays exactly.
 * Properties that are not methods pass through; the store object itself is left untouched.
 */
export function withInjectedFaults<T extends object>(
  store: T,
  shouldFail: (op: string) => boolean,
  label: string,
  io?: InflightCalls,
): T {
  return new Proxy(store, {
    get(target, key, receiver) {
      const value: unknown = Reflect.get(target, key, receiver);
      if (typeof value !== 'function' || typeof key !== 'string') return value;
      return (...args: unknown[]): unknown => {
        if (shouldFail(key)) return Promise.reject(new Error(`${label}: injected failure in ${key}`));
        const result: unknown = (value as (...a: unknown[]) => unknown).apply(target, args);
        if (io && result instanceof Promise) {
          io.count++;
          const done = () => void io.count--;
          result.then(done, done);
        }
        return result;
      };
    },
  });
}

/**
 * Store calls still running. A store that does real I/O (a database over a socket) finishes in
 * real time, which a virtual clock does not wait for: the simulator waits for this to reach
 * zero after each step, so a step's store work is done before virtual time moves on.
 */
export interface InflightCalls {
  count: number;
}

/** Waits, in real time, until no store call is running (at most `capMs`); true if it waited. */
export async function ioSettled(io: InflightCalls, capMs = 10_000): Promise<boolean> {
  if (io.count === 0) return false;
  const until = Date.now() + capMs;
  while (io.count > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 1));
  return true;
}

/** What the store did with a group message, observed at its commit. */
export type GroupCommit = { ok: true; members: string[] } | { ok: false; code: ErrorCode };

/** What {@link groupAudienceOracle} records while the run goes on. */
export interface GroupAudienceRecord {
  /** Group message id → members at its commit (or why it was refused). */
  commits: Map<string, GroupCommit>;
  /** Membership changes committed (not duplicates). */
  changes: number;
  /** When given: message id → the time of its first commit. */
  committedAt?: Map<string, number>;
}

/**
 * The oracle of "a group message goes to exactly the members at its commit": the store's
 * `append` is given each item of a batch on its own, one after the other, and the group's
 * membership is read right after each group message — the same result as the atomic batch,
 * since a fault decision is taken for the whole batch before any item is applied. Works on any
 * store, at the price of one transaction per item.
 */
export function groupAudienceOracle(
  store: ServerStore,
  record: GroupAudienceRecord,
  failBatch: () => boolean,
): ServerStore {
  const wrapped: ServerStore = Object.create(store) as ServerStore;
  wrapped.append = async (batch: AppendInput[], now: number): Promise<AppendOutcome[]> => {
    if (failBatch()) throw new Error('simulated store failure in append');
    const results: AppendOutcome[] = [];
    for (const item of batch) {
      const [outcome] = await store.append([item], now);
      results.push(outcome!);
      if (item.kind === 'group' && outcome?.ok && !outcome.duplicate) record.changes++;
      if (item.kind === 'msg' && outcome?.ok && !record.committedAt?.has(item.id)) {
        record.committedAt?.set(item.id, now);
      }
      if (item.kind !== 'msg' || !item.group || !outcome || (outcome.ok && outcome.duplicate)) {
        continue;
      }
      const g: GroupState | undefined = outcome.ok ? await store.group(item.to) : undefined;
      record.commits.set(
        item.id,
        outcome.ok ? { ok: true, members: g!.members.map((m) => m.user) } : { ok: false, code: outcome.code },
      );
    }
    return results;
  };
  return wrapped;
}
