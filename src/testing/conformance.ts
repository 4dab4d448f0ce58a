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
}

/**
 * Registers every case with a test runner's `it` (vitest, jest, mocha, `node:test`, …).
 *
 * @example
 * ```ts
 * describe('my store', () => registerCases(serverStoreConformance(subject), it));
 * ```
 */
export function registerCases(
  cases: ConformanceCase[],
  it: (name: string, fn: () => Promise<void>) => void,
): void {
  for (const c of cases) it(c.name, () => c.run());
}
