// The part of `node:assert/strict` the conformance suites use, for running them in a browser
// bundle (esbuild aliases `node:assert/strict` to this file in test/browser/harness.ts).

function fail(message?: string): never {
  throw new Error(message ?? 'assertion failed');
}

function same(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (ArrayBuffer.isView(a)) {
    const x = a as Uint8Array;
    const y = b as Uint8Array;
    return x.byteLength === y.byteLength && x.every((v, i) => v === y[i]);
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && same((a as never)[k], (b as never)[k]));
}

const show = (v: unknown) => {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
};

const assert = {
  fail,
  ok(value: unknown, message?: string): void {
    if (!value) fail(message ?? `expected a truthy value, got ${show(value)}`);
  },
  equal(actual: unknown, expected: unknown, message?: string): void {
    if (!Object.is(actual, expected)) fail(`${message ?? 'equal'}: ${show(actual)} !== ${show(expected)}`);
  },
  deepEqual(actual: unknown, expected: unknown, message?: string): void {
    if (!same(actual, expected))
      fail(`${message ?? 'deepEqual'}: ${show(actual)} differs from ${show(expected)}`);
  },
  async rejects(fn: Promise<unknown> | (() => Promise<unknown>), message?: unknown): Promise<void> {
    try {
      await (typeof fn === 'function' ? fn() : fn);
    } catch {
      return;
    }
    fail(typeof message === 'string' ? message : 'expected a rejection');
  },
};

export default assert;
