/**
 * The client's public shapes: its options, its events and what they carry. Kept apart from the
 * engine so every part can name them without importing the façade.
 * @packageDocumentation
 */
import type { PostboxError } from '../protocol/index.js';
import type { CryptoAdapter } from '../crypto/types.js';
import type { ClientTransport } from '../transport/types.js';
import type { Clock, Random } from '../util/clock.js';
import type { GapEvent } from './gaps.js';
import type { GroupChangeEvent, GroupView } from './groups.js';
import type { GroupInvite } from './invites.js';
import type { ClientStore, MessageStatus, SendFailure } from './store.js';

/**
 * Connection states; every transition emits `connection`. `linking`: this is a new device of a
 * user who already has devices, waiting for one of them to approve it (see the `linkCode` event).
 */
export type ConnectionState =
  'idle' | 'connecting' | 'handshaking' | 'linking' | 'open' | 'backoff' | 'closed';

/** Presence of a watched user. */
export interface PresenceChange {
  user: string;
  online: boolean;
  /** When it was last online, if offline and the privacy rule shows it. */
  lastSeen?: number;
}

/** Someone started or stopped typing in a conversation. */
export interface TypingChange {
  /** The 1:1 peer or the group id. */
  conv: string;
  user: string;
  device: string;
  /** False when they stopped, sent the message, or the notice expired. */
  on: boolean;
}

/** One member's receipt of a group message this device sent. */
export interface MemberStatus {
  user: string;
  status: 'delivered' | 'read' | 'expired';
}

/**
 * What is known about a message this device sent: the "message info" view. `reason` and `detail`
 * say why when it is `failed` or `expired` (absent for messages that failed before a client that
 * kept reasons).
 */
export interface MessageInfo extends Partial<SendFailure> {
  id: string;
  conv: string;
  /** The aggregate: for a group, `delivered` means delivered to all, `read` read by all. */
  status: MessageStatus;
  /** Group messages: the members it went to (as this device knew the group at send time). */
  recipients?: string[];
  /** Group messages: each member's receipt so far. */
  members?: MemberStatus[];
}

/** A message as the app sees it. */
export interface ReceivedMessage {
  id: string;
  /** Conversation from this user's point of view: the peer for 1:1. */
  conv: string;
  from: string;
  fromDevice: string;
  seq: number;
  /** Server commit time (ms): for display, never for order. */
  ts: number;
  body: Uint8Array;
  /** A copy of this user's own message, sent from another of its devices. */
  self: boolean;
  /** Arrived after its gap was already given up (see the `gap` event). */
  late: boolean;
  /** A group message: `conv` is the group id. */
  group: boolean;
}

/**
 * A status change of a message this device sent. When `status` is `failed` or `expired`, and
 * only then, `reason` (an error code: `unknown_recipient`, `not_member`, `too_large`,
 * `forbidden`, `mismatched_devices`, `no_keys`, `expired`, …) and `detail` (a human message) say why; the
 * same are stored with the message (see {@link PostboxClient.messageInfo}, {@link PostboxClient.history}).
 */
export interface StatusChange extends Partial<SendFailure> {
  id: string;
  conv: string;
  status: MessageStatus;
  /** The user that produced it (delivered/read), when known. */
  by?: string;
}

/** Events of {@link PostboxClient}. */
export interface ClientEvents {
  /**
   * A new message, in per-sender order: fired once per message, right after the client store
   * committed it, and never again for that id (not after a restart, nor when the server delivers
   * it again). An app that died before handling it finds it with {@link PostboxClient.history}.
   */
  message: (message: ReceivedMessage) => void;
  /** A sent message moved forward: pending → sent → delivered → read, or failed / expired. */
  status: (change: StatusChange) => void;
  /**
   * Messages of a sender will not come, and why (`reason`): at once when the server said it
   * dropped them (`expired`), else once the hole stayed open past `gapTimeoutMs` or
   * `maxHeldPerStream` (see {@link GapReason}). The held messages after it follow.
   */
  gap: (gap: GapEvent) => void;
  /**
   * The connection state changed, from `previous` (see docs/engines.md for the transition
   * table). `error` is set when the change was caused by one.
   */
  connection: (state: ConnectionState, error: PostboxError | undefined, previous: ConnectionState) => void;
  /** Messages were marked read on another device of this user. */
  readElsewhere: (ids: string[]) => void;
  /** A group this device knows changed (or became known); `change` is what happened. */
  group: (view: GroupView, change: GroupChangeEvent) => void;
  /**
   * This user was invited to a group (`pending`: accept with {@link PostboxClient.acceptGroupInvite}
   * or decline), or the invite is gone (`declined` on one of its devices). See docs/groups.md.
   */
  groupInvite: (invite: GroupInvite, state: 'pending' | 'declined') => void;
  /** A member's receipt of a group message this device sent (see {@link PostboxClient.messageInfo}). */
  memberStatus: (change: { id: string; conv: string; user: string; status: MemberStatus['status'] }) => void;
  /** A watched user's presence (see {@link PostboxClient.watchPresence}). */
  presence: (change: PresenceChange) => void;
  /** Typing notices of others; `on: false` also when a notice expired without a stop. */
  typing: (change: TypingChange) => void;
  /**
   * This device awaits approval: show `code` (e.g. as a QR code) to an existing device of the
   * user, which calls {@link PostboxClient.approveDevice}. A new code comes on each connection.
   */
  linkCode: (link: { code: string; expiresAt: number }) => void;
  /**
   * A local fault that no call's outcome can carry: the client store or the crypto adapter
   * failed, the `credentials` function threw, a frame could not be read (this client's by the
   * server, or the server's by this client). The engine recovers by reconnecting. A request the
   * server refuses never comes here: a send's refusal is its `status` (`failed` with a
   * `reason`), a group change or other call rejects with the code, and a refused typing notice
   * is dropped like one sent offline.
   */
  error: (error: unknown) => void;
  /**
   * A peer device's identity key changed (a re-install, or someone in the middle): show it, and
   * offer {@link PostboxClient.safetyNumber} to compare. Under `identityPolicy: 'block'`, messages
   * to and from that device wait for {@link PostboxClient.verifyIdentity}.
   */
  identityChanged: (peer: { user: string; device: string }) => void;
  /**
   * A message that this device could not decrypt and its sender could not send again (gone from
   * its log). Recoverable failures never show up here: the message arrives late instead.
   */
  undecryptable: (info: { from: string; fromDevice: string; id: string }) => void;
}

/** Options of {@link PostboxClient.send} and {@link PostboxClient.sendToGroup}. */
export interface SendOptions {
  /**
   * The message's id, instead of a new one. A send whose id is already in this device's outbox
   * stores nothing and resolves with the id (no second message, no second `pending` status), so
   * a caller that cannot tell whether an earlier send got stored (a hand-off from another tab, a
   * retry after a crash) sends again safely. 1–64 of `A–Z a–z 0–9 _ -`; a ULID is best (ids that
   * sort by creation time). The server dedupes by it too.
   * @default a new ULID
   */
  id?: string;
}

/** Options of {@link createClient}. */
export interface ClientOptions {
  transport: ClientTransport;
  store: ClientStore;
  /**
   * Sent in `hello` for the server's `authenticate` hook. A function is called on every connect
   * (refresh a token there); with a function, a refusal is retried after a backoff, with a
   * static value it closes the client for good. A session whose credentials expire or are revoked
   * is closed by the server (4007); the client then reconnects, calling the function again, or
   * with a static value closes for good with `unauthorized`.
   */
  credentials: unknown | (() => unknown | Promise<unknown>);
  /** Device id hint sent in `hello` (a valid device id, or the constructor throws `invalid_frame`). */
  device?: string;
  /** @default systemClock */
  clock?: Clock;
  /** Randomness for ids and jitter. @default Math.random */
  random?: Random;
  /**
   * Ceiling of the first wait before reconnecting, ms; each failed attempt doubles it (each wait
   * is uniform below its ceiling: full jitter). See docs/engines.md, "Reconnecting".
   * @default 500
   */
  backoffBaseMs?: number;
  /**
   * Largest ceiling of a wait before reconnecting, ms: once the waits have grown to it, the
   * client is back at most this long after the server is (see {@link DEFAULT_BACKOFF_MAX_MS} for
   * why 8 s). Also the least time between two waits {@link PostboxClient.reconnectNow} skips.
   * @default 8000
   */
  backoffMaxMs?: number;
  /** How long a hole in a sender's sequence may stay open before `gap`. @default 10000 */
  gapTimeoutMs?: number;
  /**
   * Most messages held behind one hole per sender device; one more gives the hole up at once
   * (a `gap` event), so a sender that skips a number cannot make this device buffer without end.
   * @default 1024
   */
  maxHeldPerStream?: number;
  /** Give up on a handshake after this. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Most sends in flight (the server's advertised window caps it too). @default 128 */
  maxInflight?: number;
  /** Largest body accepted by `send` before the server says otherwise. @default 65536 */
  maxBodyBytes?: number;
  /** Connect as soon as the client is created. @default true */
  autoStart?: boolean;
  /** A typing notice with no stop and no refresh ends after this. @default 6000 */
  typingTimeoutMs?: number;
  /** While typing continues, `on` is sent again at most this often. @default 3000 */
  typingRefreshMs?: number;
  /**
   * Under load, acks of received entries wait up to this long to leave as one frame (like TCP's
   * delayed ACK): a burst costs one ack, and on a busy device acking does not compete with
   * receiving. A quiet connection (no ack frame within the last `ackDelayMs`) acks as soon as
   * the received entries are stored, so at light load the sender's ✓✓ is not delayed; after
   * that, the next ack frame leaves `ackDelayMs` after the previous one. Half the server's
   * delivery window of unsent acks goes out at once, so a drain never stalls; the sender's ✓✓
   * comes this much later at most. Acks of statuses (✓✓ entries, which nobody waits on) are
   * quiet: they ride with the next frame written, or leave after 10 × this. 0 always acks as
   * soon as the received entries are stored.
   * @default 25
   */
  ackDelayMs?: number;
  /**
   * End-to-end encryption (docs/encryption.md): every body is encrypted on this device for each
   * recipient device, and the server only ever sees ciphertext. Every client of an app must use
   * the same setting. Without it, bodies travel as the app gives them.
   */
  crypto?: CryptoAdapter;
  /**
   * When a peer device's identity key changes: `'accept'` it and emit `identityChanged` (what
   * most messengers do), or `'block'` messages to and from it until {@link PostboxClient.verifyIdentity}.
   * @default 'accept'
   */
  identityPolicy?: 'accept' | 'block';
  /** One-time prekeys of each kind kept in the server's directory. @default 50 */
  preKeySupply?: number;
  /** The signed prekey is rotated after this. @default 7 days */
  signedPreKeyMaxAgeMs?: number;
  /** A peer that could not decrypt a message may have it sent again this long after it was sent. @default 1 day */
  resendWindowMs?: number;
  /**
   * With encryption: how long a message to a user whose devices have not published keys yet is
   * held (`pending`, later messages to that user behind it) waiting for them, before it fails with
   * `no_keys`. Counted from when the client first found the user without keys; a restart of the
   * client starts it again. See docs/encryption.md, "A new contact: when can I write?".
   * @default 1 day
   */
  keyWaitMs?: number;
}
