/**
 * Hand-written checks for the frames every message crosses (`msg`, `st`, `ok` on the client;
 * `send`, `ack` on the server), tried before the zod schema of frames.ts. A zod object parse
 * allocates a result and an issue list per field; at a few thousand frames a second those
 * allocations were a sixth of everything the client engines allocated, and their garbage
 * collections the largest part of the latency tail (docs/benchmarks.md, issue 16).
 *
 * A check only ever *accepts*: it returns true when the frame is valid by exactly the rules of its
 * schema (and then normalises it as the schema's transforms would, in place), and false for
 * anything else, valid or not, which the schema then judges, with its error messages. So the
 * schema stays the single source of truth; test/protocol-fast-checks.test.ts holds each check to
 * it on seeded valid and broken frames.
 * @packageDocumentation
 */
import { isGroupId, isUserId, isDeviceId } from './ids.js';

/** A frame object as the compact decoder builds it: known fields only, none undefined. */
type Fields = Record<string, unknown>;

/** `z.int()` with `nonnegative()` (and `maximum`). */
const uint = (v: unknown, max = Number.MAX_SAFE_INTEGER): boolean =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max;

/** `z.number()`: finite numbers only. */
const finite = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v);

/** The `id` schema: a string of 1-64 characters. */
const messageId = (v: unknown): boolean => typeof v === 'string' && v.length >= 1 && v.length <= 64;

/** The `conversation` schema: a user id or a group id. */
const conversation = (v: unknown): boolean => isUserId(v) || isGroupId(v);

/** The frame refinement `to matches g`: `to` names a group exactly when `g` is set. */
function toMatchesG(f: Fields): boolean {
  return f.g === true ? f.to !== undefined && isGroupId(f.to) : f.to === undefined || !isGroupId(f.to);
}

/**
 * The `bytes` schema: any Uint8Array, handed on as a plain Uint8Array over the same memory (the
 * schema's transform). Writes the field; false when it is not binary.
 */
function bytes(f: Fields, key: string): boolean {
  const v = f[key];
  if (!(v instanceof Uint8Array)) return false;
  if (v.constructor !== Uint8Array) f[key] = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  return true;
}

const REQ_ID_MAX = 0xffffffff;
const WIRE_STATUS: ReadonlySet<unknown> = new Set(['d', 'r', 'x']);

/** A check of one frame type. */
type Check = (f: Fields) => boolean;

/** Checks of frames a server sends, by type; a type without one always goes to its schema. */
const SERVER: Record<string, Check> = {
  ok: (f) => uint(f.r, REQ_ID_MAX),
  msg: (f) =>
    uint(f.o) &&
    messageId(f.id) &&
    isUserId(f.f) &&
    isDeviceId(f.fd) &&
    (f.to === undefined || conversation(f.to)) &&
    uint(f.seq) &&
    finite(f.ts) &&
    (f.g === undefined || f.g === true) &&
    toMatchesG(f) &&
    bytes(f, 'b'),
  st: (f) => {
    if (!uint(f.o) || !WIRE_STATUS.has(f.s) || !isUserId(f.by) || !finite(f.ts)) return false;
    const ids = f.ids;
    if (!Array.isArray(ids) || ids.length < 1 || ids.length > 4096) return false;
    for (const id of ids) if (!messageId(id)) return false;
    return true;
  },
};

/** Checks of frames a client sends, by type. */
const CLIENT: Record<string, Check> = {
  ack: (f) => {
    const o = f.o;
    if (!Array.isArray(o) || o.length < 1 || o.length > 1024) return false;
    for (const v of o) if (!uint(v)) return false;
    return true;
  },
  send: (f) =>
    // End-to-end envelopes (`e`) are rarer and deeper: the schema checks those.
    f.e === undefined &&
    uint(f.r, REQ_ID_MAX) &&
    messageId(f.id) &&
    conversation(f.to) &&
    uint(f.seq) &&
    (f.g === undefined || f.g === true) &&
    toMatchesG(f) &&
    bytes(f, 'b'),
};

/**
 * Whether `frame` (from the compact decoder: a fresh object holding only its type's fields) is a
 * valid frame of its type `frame.t` from a server (`from: 'server'`) or a client by a fast check;
 * it may then have been normalised in place. False means "ask the schema", not "invalid".
 * @internal
 */
export function passesFastCheck(from: 'server' | 'client', frame: Fields): boolean {
  const table = from === 'server' ? SERVER : CLIENT;
  const t = frame.t;
  if (typeof t !== 'string' || !Object.hasOwn(table, t)) return false;
  return table[t]!(frame);
}
