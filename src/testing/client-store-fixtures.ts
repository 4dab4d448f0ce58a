/**
 * Builders and assertions shared by the client store conformance cases.
 * @internal
 * @packageDocumentation
 */
import assert from 'node:assert/strict';
import type { InboundMessage, OutboxDraft } from '../client/store.js';

/** UTF-8 for the bodies the cases build. */
export const encoder = new TextEncoder();

/** A message draft to `conv` (a user), numbered by the caller's id. */
export function draft(id: string, conv: string, body?: Uint8Array): OutboxDraft {
  return { id, kind: 'msg', to: conv, conv, body: body ?? encoder.encode(`body of ${id}`), createdAt: 1000 };
}

/** A read receipt draft for `ids`. */
export function readDraft(id: string, conv: string, ids: string[]): OutboxDraft {
  return { id, kind: 'read', to: conv, conv, ids, createdAt: 1000 };
}

/** A received message from `conv`'s user (device `d1`), shown unless `extra` says held. */
export function inbound(
  id: string,
  conv: string,
  seq: number,
  extra: Partial<InboundMessage> = {},
): InboundMessage {
  return {
    id,
    conv,
    from: conv,
    fromDevice: 'd1',
    to: 'me',
    seq,
    ts: 1000 + seq,
    body: encoder.encode(`body of ${id}`),
    held: false,
    read: false,
    ...extra,
  };
}

/** Every byte value, twice, in a non-trivial order. */
export function binaryBody(): Uint8Array {
  const b = new Uint8Array(512);
  for (let i = 0; i < b.length; i++) b[i] = (i * 167 + 13) & 0xff;
  return b;
}

/** Fails unless `actual` holds exactly the bytes of `expected`. */
export function assertBytes(actual: Uint8Array | undefined, expected: Uint8Array, what: string): void {
  assert.ok(actual instanceof Uint8Array, `${what}: body is a Uint8Array`);
  assert.equal(actual.byteLength, expected.byteLength, `${what}: body length`);
  for (let i = 0; i < expected.byteLength; i++) {
    if (actual[i] !== expected[i]) assert.fail(`${what}: body differs at byte ${i}`);
  }
}

/** An entry without its body, so the rest compares with deepEqual whatever byte class is used. */
export function shape<T extends { body?: Uint8Array }>(e: T): Omit<T, 'body'> {
  const { body: _body, ...rest } = e;
  return rest;
}

/** The ids of a list, in its order. */
export const ids = (list: Array<{ id: string }>): string[] => list.map((e) => e.id);
