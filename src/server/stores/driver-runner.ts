/**
 * How a {@link driverStore} runs a call on its driver: in place for a local driver, in turn and
 * in load rounds with a conditional flush for a remote one (see `DriverRemote`).
 * @internal
 * @packageDocumentation
 */
import type { StoreDriver } from './driver.js';

/** How many load rounds one call may take before it fails (a driver that never loads what it missed). */
const MAX_ROUNDS = 32;
/** How many times one call may find what it read changed by another node before it gives up. */
const MAX_CONFLICTS = 64;
/** Thrown inside a unit that missed a read, so that `atomically` rolls its writes back. */
const MISSED = new Error('a read was missed');

/**
 * How the store runs a call on the driver: `unit` for a call that writes (one atomic unit),
 * `view` for one that only reads. A local driver runs them in place; a remote one in turn, one
 * call at a time, each until a round misses nothing, then flushed.
 */
export function units(d: StoreDriver): {
  unit: <T>(fn: () => T) => T | Promise<T>;
  view: <T>(fn: () => T) => T | Promise<T>;
} {
  const remote = d.remote;
  if (!remote) {
    return {
      unit: (fn) => d.atomically(fn),
      view: (fn) => fn(),
    };
  }
  async function rounds<T>(fn: () => T): Promise<T> {
    let conflicts = 0;
    for (let round = 1; ; round++) {
      let out: T;
      try {
        out = d.atomically(() => {
          const r = fn();
          if (remote!.missed()) throw MISSED; // what it wrote rested on reads it did not have
          return r;
        });
      } catch (e) {
        // A unit that missed a read may have thrown for want of it: load and run it again.
        if (!remote!.missed()) throw e;
        if (round >= MAX_ROUNDS) throw new Error(`driver store: still missing reads after ${round} loads`);
        await remote!.fetch();
        continue;
      }
      if ((await remote!.flush()) !== false) return out;
      // Another node wrote what the unit read: run it again on what is there now.
      if (++conflicts > MAX_CONFLICTS) throw new Error(`driver store: ${conflicts} write conflicts in a row`);
      round = 0;
    }
  }
  let queue: Promise<unknown> = Promise.resolve();
  const inTurn = <T>(fn: () => T): Promise<T> => {
    const p = queue.then(() => rounds(fn));
    queue = p.catch(() => {});
    return p;
  };
  return { unit: inTurn, view: inTurn };
}
