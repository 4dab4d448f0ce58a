/**
 * The shared kit for conformance suites: a suite is a list of named cases that any test runner
 * with an `it(name, fn)` function can register.
 */

/** One named guarantee of a contract, checked by `run` (which rejects when it does not hold). */
export interface ConformanceCase {
  /** The guarantee the case proves, used as the test name. */
  name: string;
  /** Checks the guarantee; resolves when it holds, rejects (usually with an assertion) when not. */
  run(): Promise<void>;
  /**
   * What the subject must declare for the case to apply (a store capability, or `faults` for a
   * subject that can inject write faults); select cases by it to run a suite by capability.
   */
  needs?: readonly string[];
  /** Why the case does not apply to this subject: {@link registerCases} skips it, saying so. */
  skip?: string;
}

/** A test runner's `it`: `it(name, fn)`, with `it.skip(name, fn)` where the runner has one. */
export interface CaseRunner {
  (name: string, fn: () => Promise<void>): void;
  skip?: (name: string, fn: () => Promise<void>) => void;
}

/**
 * Registers every case with a test runner's `it` (vitest, jest, mocha, `node:test`, …). A case
 * with a `skip` reason is registered with `it.skip`, the reason in its name (`… [skipped: …]`),
 * or, for a runner without `it.skip`, not registered and its reason logged.
 *
 * @example
 * ```ts
 * describe('my store', () => registerCases(serverStoreConformance(subject), it));
 * ```
 */
export function registerCases(cases: ConformanceCase[], it: CaseRunner): void {
  for (const c of cases) {
    if (c.skip === undefined) it(c.name, () => c.run());
    else if (it.skip) it.skip(`${c.name} [skipped: ${c.skip}]`, () => c.run());
    else console.warn(`conformance: ${c.name} [skipped: ${c.skip}]`);
  }
}

/** What a store case works on: the store under test, and a way to restart it over the same data. */
export interface StoreHarness<S> {
  /** The current store (replaced by {@link StoreHarness.reopen}). */
  store: S;
  /** Closes the store and opens a new one over the same data; returns (and keeps) the new one. */
  reopen(): Promise<S>;
}

/**
 * Builds a `test(name, body)` helper for a store suite: each case opens fresh data, hands the
 * body a {@link StoreHarness}, and closes whatever store is current at the end.
 * @internal
 */
export function storeCaseBuilder<S extends { close(): Promise<void> }>(
  subject: { open(): Promise<S>; reopen(store: S): Promise<S> },
  cases: ConformanceCase[],
): (name: string, body: (h: StoreHarness<S>) => Promise<void>) => void {
  return (name, body) => {
    cases.push({
      name,
      async run() {
        const h: StoreHarness<S> = {
          store: await subject.open(),
          async reopen() {
            h.store = await subject.reopen(h.store);
            return h.store;
          },
        };
        try {
          await body(h);
        } finally {
          await h.store.close();
        }
      },
    });
  };
}
