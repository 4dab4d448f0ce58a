/**
 * The frames tabs of one device exchange over their BroadcastChannel, and the check every
 * received one passes before it is used (another tab may run another version of the app).
 * @packageDocumentation
 */
import type { ErrorCode } from '../../protocol/errors.js';
import type { LeaseFrame } from './election.js';

/** The tab protocol's version: a tab ignores frames of another (an old tab after a deploy). */
export const TAB_PROTOCOL = 1;

/** The client methods a follower may call on the leader. */
export const CALLS = [
  'send',
  'sendToGroup',
  'history',
  'conversations',
  'markRead',
  'messageInfo',
  'setTyping',
  'watchPresence',
  'unwatchPresence',
  'reconnectNow',
] as const;
/** A method a follower may call on the leader. */
export type CallName = (typeof CALLS)[number];

/** The client events the leader passes on to every tab. */
export const EVENTS = [
  'message',
  'status',
  'typing',
  'presence',
  'connection',
  'readElsewhere',
  'gap',
  'memberStatus',
  'group',
  'identityChanged',
  'undecryptable',
] as const;
/** An event the leader passes on. */
export type EventName = (typeof EVENTS)[number];

/** A frame between tabs (plus the lease election's own, {@link LeaseFrame}). */
export type TabFrame =
  | LeaseFrame
  /** A follower's call; `rid` is unique to the calling tab. */
  | { k: 'call'; tab: string; rid: string; m: CallName; a: unknown[] }
  /** The leader's answer to a call: a value, or an error as code and message. */
  | { k: 'ret'; rid: string; v?: unknown; e?: { code: ErrorCode; message: string } }
  /** A client event, passed on by the leader. */
  | { k: 'ev'; n: EventName; a: unknown[] }
  /** The leader says who it is (when it starts leading, and to a `who`). */
  | { k: 'lead'; tab: string; state: string }
  /** A new tab asks who leads. */
  | { k: 'who'; tab: string };

const KINDS = new Set(['beat', 'claim', 'bye', 'call', 'ret', 'ev', 'lead', 'who']);
const CALL_SET: ReadonlySet<string> = new Set(CALLS);
const EVENT_SET: ReadonlySet<string> = new Set(EVENTS);

const str = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128;
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** The frame in a channel message, or undefined when it is not one this version understands. */
export function readFrame(data: unknown): TabFrame | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const { v, f } = data as { v?: unknown; f?: unknown };
  if (v !== TAB_PROTOCOL || typeof f !== 'object' || f === null) return undefined;
  const x = f as Record<string, unknown>;
  if (!KINDS.has(x.k as string)) return undefined;
  switch (x.k) {
    case 'beat':
      return str(x.tab) && num(x.since) ? (f as TabFrame) : undefined;
    case 'claim':
      return str(x.tab) && num(x.at) ? (f as TabFrame) : undefined;
    case 'call':
      return str(x.tab) && str(x.rid) && CALL_SET.has(x.m as string) && Array.isArray(x.a)
        ? (f as TabFrame)
        : undefined;
    case 'ret':
      return str(x.rid) ? (f as TabFrame) : undefined;
    case 'ev':
      return EVENT_SET.has(x.n as string) && Array.isArray(x.a) ? (f as TabFrame) : undefined;
    case 'lead':
      return str(x.tab) && typeof x.state === 'string' ? (f as TabFrame) : undefined;
    default:
      return str(x.tab) ? (f as TabFrame) : undefined;
  }
}

/** A channel message carrying `frame`. */
export const envelope = (frame: TabFrame) => ({ v: TAB_PROTOCOL, f: frame });
