/**
 * Running a store suite by capability: a case names what it `needs`, and a case whose needs the
 * subject does not declare is marked skipped, with the reason. Internal to `postbox/testing`.
 * @internal
 */
import type { StoreCapabilities } from '../server/store.js';
import type { ConformanceCase } from './conformance.js';

/**
 * Marks the cases whose `needs` the subject lacks as skipped, with the missing names as the
 * reason. `has` answers for one name.
 */
export function skipUnmet(cases: ConformanceCase[], has: (need: string) => boolean, who: string): void {
  for (const c of cases) {
    const missing = (c.needs ?? []).filter((n) => !has(n));
    if (missing.length > 0) c.skip = `${who} does not declare ${missing.join(', ')}`;
  }
}

/**
 * Whether a subject declares `need`: a store capability, `faults` (it can open a store with a
 * fault hook) or `capabilities` (it declares any).
 */
export function subjectHas(
  subject: { capabilities?: StoreCapabilities; openWithFaults?: unknown },
  need: string,
): boolean {
  if (need === 'faults') return subject.openWithFaults !== undefined;
  if (need === 'capabilities') return subject.capabilities !== undefined;
  return (subject.capabilities as Record<string, boolean> | undefined)?.[need] === true;
}
