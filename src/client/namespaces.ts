/**
 * Where the client engine keeps its own bookkeeping in the client store's state namespaces, and
 * the small encodings it uses there. One list, so no two parts can pick the same namespace.
 * @packageDocumentation
 */

/** Group views, by group id. */
export const NS_GROUP = 'group';
/** A sent group message's recipients at send time, by message id. */
export const NS_GROUP_SEND = 'gsend';
/** A sent group message's receipt counters (delivered, read), by message id. */
export const NS_GROUP_COUNT = 'gcount';
/** One member's receipt of a sent group message, by `id NUL user`. */
export const NS_MEMBER_STATUS = 'rcpt';
/** Group streams waiting for messages asked for again (see `pin`), by stream key. */
export const NS_PINS = 'pin';
/**
 * A sent group message's group version, and when each user last joined a group: who may have
 * received the message (its statuses are believed, and a resend is answered, only from them).
 */
export const NS_GROUP_SEND_VER = 'gsendv';
/** When a user last joined a group (the group's version then), by `group NUL user`. */
export const NS_GROUP_JOINED = 'gjoin';

/** The key of one sender device's stream in one conversation (sequence numbers, held messages). */
export const streamKey = (conv: string, from: string, fromDevice: string): string =>
  `${conv}\u0000${from}\u0000${fromDevice}`;

/** The stream a {@link streamKey} names (names never hold NUL). */
export function streamOf(key: string): { conv: string; from: string; fromDevice: string } {
  const [conv, from, fromDevice] = key.split('\u0000') as [string, string, string];
  return { conv, from, fromDevice };
}

/** The key of a pair of names in one namespace (`id NUL user`, `group NUL user`). */
export const pairKey = (a: string, b: string): string => `${a}\u0000${b}`;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A number as stored in a namespace (decimal text). */
export const encodeNumber = (n: number): Uint8Array => encoder.encode(String(n));
/** A stored number. */
export const decodeNumber = (b: Uint8Array): number => Number(decoder.decode(b));

/** A set of sequence numbers as stored (JSON text), or undefined for an empty one (deleted). */
export const encodeSeqs = (set: Set<number> | undefined): Uint8Array | undefined =>
  set?.size ? encoder.encode(JSON.stringify([...set])) : undefined;
/** A stored set of sequence numbers. */
export const decodeSeqs = (b: Uint8Array): Set<number> => new Set(JSON.parse(decoder.decode(b)) as number[]);
