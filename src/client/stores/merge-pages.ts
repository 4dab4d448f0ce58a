/**
 * The history page of a store that keeps received and sent messages apart (SQLite tables,
 * IndexedDB object stores): each side's page, already newest first, merged by position.
 * @packageDocumentation
 */
import type { HistoryRecord, InboundMessage, OutboxEntry } from '../store.js';

/**
 * Merges two pages that are each in descending position order into at most `limit` records,
 * newest first. Each side must hold at least the `limit` newest of its own rows below the
 * cursor, so the merge is the `limit` newest of both.
 */
export function mergePages<I extends { pos: number }, O extends { pos: number }>(
  ins: readonly I[],
  outs: readonly O[],
  limit: number,
  toInbound: (row: I) => InboundMessage,
  toOutgoing: (row: O) => OutboxEntry,
): HistoryRecord[] {
  const out: HistoryRecord[] = [];
  let i = 0;
  let o = 0;
  while (out.length < limit && (i < ins.length || o < outs.length)) {
    if (o >= outs.length || (i < ins.length && ins[i]!.pos > outs[o]!.pos)) {
      const r = ins[i++]!;
      out.push({ pos: r.pos, inbound: toInbound(r) });
    } else {
      const r = outs[o++]!;
      out.push({ pos: r.pos, outgoing: toOutgoing(r) });
    }
  }
  return out;
}
