/**
 * What the app reads back from the client store: one conversation's messages (received and
 * sent) and the conversation list. This is how an app reconciles its own state with the store
 * at start, after a crash between a store commit and its own `message` handler. See
 * docs/history.md.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/index.js';
import { isGroupId } from '../protocol/index.js';
import type { ReceivedMessage } from './types.js';
import { withFailure } from './failure.js';
import type { ClientStore, HistoryRecord, MessageStatus, SendFailure } from './store.js';

/**
 * One message of a conversation's history, received or sent from this device: the fields of a
 * `message` event, plus where it stands and how far it got. For an outgoing message `from` and
 * `fromDevice` are this device (empty strings for messages queued before it ever connected, when
 * the server had not named it yet), `ts` is when this device queued it, and `self` is true.
 */
export interface HistoryMessage extends Omit<ReceivedMessage, 'late'>, Partial<SendFailure> {
  /** Where the message stands in the history: pass it as `before` to read the older ones. Opaque. */
  cursor: string;
  /** Sent from this device; `status` says how far it got. */
  outgoing: boolean;
  /**
   * Outgoing messages: `pending`, `sent`, `delivered`, `read`, `failed` or `expired`; with the
   * last two, `reason` and `detail` say why (as the `status` event did).
   */
  status?: MessageStatus;
  /** Received messages: marked read on this device or on another device of this user. */
  read?: boolean;
}

/** Options of {@link PostboxClient.history}. */
export interface HistoryOptions {
  /** Only messages older than this cursor (a {@link HistoryMessage.cursor}). @default the newest */
  before?: string;
  /** Most messages returned (1 to {@link MAX_HISTORY_PAGE}). @default 50 */
  limit?: number;
}

/** A conversation in {@link PostboxClient.conversations}. */
export interface ConversationSummary {
  /** The peer for 1:1, the group id for a group. */
  conv: string;
  group: boolean;
  /** Its latest message, received or sent. */
  last: HistoryMessage;
  /**
   * Received messages not yet marked read, on this device or another of this user's (a copy of
   * this user's own message, sent from another device, is never unread).
   */
  unread: number;
}

/** Who this device is, once known (a `from` for outgoing messages). */
export interface SelfIdentity {
  user: string;
  device: string;
}

/** Largest page {@link PostboxClient.history} serves. */
export const MAX_HISTORY_PAGE = 500;

/** A store record as the app sees it. */
export function toHistoryMessage(r: HistoryRecord, me: SelfIdentity | undefined): HistoryMessage {
  // An outgoing entry, seen as the message it is: from this device.
  const m = r.inbound
    ? r.inbound
    : {
        id: r.outgoing.id,
        conv: r.outgoing.conv,
        from: me?.user ?? '',
        fromDevice: me?.device ?? '',
        seq: r.outgoing.seq ?? 0,
        ts: r.outgoing.createdAt,
        body: r.outgoing.body ?? new Uint8Array(0),
      };
  const message: HistoryMessage = {
    cursor: String(r.pos),
    id: m.id,
    conv: m.conv,
    group: isGroupId(m.conv),
    outgoing: r.outgoing !== undefined,
    from: m.from,
    fromDevice: m.fromDevice,
    seq: m.seq,
    ts: m.ts,
    body: m.body,
    self: r.outgoing !== undefined || (me !== undefined && m.from === me.user),
  };
  if (r.inbound) message.read = r.inbound.read;
  else withFailure(message, r.outgoing).status = r.outgoing.status;
  return message;
}

/** Reads one page of a conversation's history (the engine runs it as a store task). */
export async function readHistory(
  store: ClientStore,
  conv: string,
  options: HistoryOptions,
  me: SelfIdentity | undefined,
): Promise<HistoryMessage[]> {
  const limit = options.limit ?? 50;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_HISTORY_PAGE) {
    throw new PostboxError('invalid_frame', `history limit: an integer from 1 to ${MAX_HISTORY_PAGE}`);
  }
  let before: number | undefined;
  if (options.before !== undefined) {
    before = /^\d{1,15}$/.test(options.before) ? Number(options.before) : NaN;
    if (!Number.isSafeInteger(before)) {
      throw new PostboxError('invalid_frame', 'history before: a cursor from an earlier history page');
    }
  }
  const records = await store.history(conv, before, limit);
  return records.map((r) => toHistoryMessage(r, me));
}

/** Reads the conversation list (the engine runs it as a store task). */
export async function readConversations(
  store: ClientStore,
  me: SelfIdentity | undefined,
): Promise<ConversationSummary[]> {
  return (await store.conversations()).map((c) => {
    const last = toHistoryMessage(c.last, me);
    return { conv: c.conv, group: last.group, last, unread: c.unread };
  });
}

/** The state namespace and key of this device's identity. */
const NS_SELF = 'self';
const KEY_SELF = 'me';

/** This device's identity as last saved, or undefined before its first connection. */
export async function loadIdentity(store: ClientStore): Promise<SelfIdentity | undefined> {
  const raw = await store.getState(NS_SELF, KEY_SELF);
  if (!raw) return undefined;
  const [user, device] = new TextDecoder().decode(raw).split('\u0000');
  return user !== undefined && device !== undefined ? { user, device } : undefined;
}

/** Saves this device's identity when it differs from the saved one (so history can name it offline). */
export async function saveIdentity(store: ClientStore, me: SelfIdentity): Promise<void> {
  const saved = await loadIdentity(store);
  if (saved?.user === me.user && saved.device === me.device) return;
  await store.putState([
    { ns: NS_SELF, key: KEY_SELF, value: new TextEncoder().encode(`${me.user}\u0000${me.device}`) },
  ]);
}
