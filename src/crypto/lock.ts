/**
 * A keyed mutex: runs async work one at a time per key, in call order. Crypto adapters serialize
 * every operation on a session (and on a group sender key) with it, because the Signal library
 * does no locking of its own: two concurrent encrypts to one device would reuse a message key.
 * Browser-safe.
 * @packageDocumentation
 */

/** Serializes async work per key; different keys run concurrently. */
export interface KeyedLock {
  /**
   * Runs `fn` after every earlier call for `key` has settled (resolved or rejected), and returns
   * its result. A rejection of `fn` is returned to this caller only: the next call still runs.
   */
  run<T>(key: string, fn: () => Promise<T>): Promise<T>;
  /** How many keys have work queued or running (0 when idle: finished keys are forgotten). */
  readonly size: number;
}

const settle = (): void => {};

/**
 * A new {@link KeyedLock}.
 *
 * @example
 * ```ts
 * const lock = keyedLock();
 * await Promise.all([lock.run('bob', () => encrypt(a)), lock.run('bob', () => encrypt(b))]); // one after the other
 * ```
 */
export function keyedLock(): KeyedLock {
  const tails = new Map<string, Promise<void>>();
  return {
    run<T>(key: string, fn: () => Promise<T>): Promise<T> {
      const prev = tails.get(key);
      // A first caller starts at once (no extra tick); a synchronous throw still becomes a rejection.
      const result = prev ? prev.then(fn) : new Promise<T>((resolve) => resolve(fn()));
      const tail = result.then(settle, settle);
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return result;
    },
    get size() {
      return tails.size;
    },
  };
}
