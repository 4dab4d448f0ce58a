/**
 * The client engine's façade: `PostboxClient` keeps the public API (methods, events) and wires
 * the parts, each owning one kind of state (see docs/engines.md, "The client's parts"):
 * connection.ts (the state machine), requests.ts (request correlation), outbox.ts, inbound.ts
 * and acks.ts, receipts.ts, group-state.ts, presence.ts, and a stage — plain.ts or sealed.ts —
 * for what differs with encryption. The parts share context.ts and never import each other's
 * classes: the façade hands each the few functions of another it needs.
 *
 * Over 400 lines for one reason: the public API's TSDoc (about two thirds of the file) lives
 * here, with the methods it documents; the methods themselves only delegate.
 * @packageDocumentation
 */
import { EventEmitter } from 'eventemitter3';
import {
  PostboxError,
  assertDeviceId,
  assertGroupId,
  assertUserId,
  isGroupId,
  type ServerFrame,
} from '../protocol/index.js';
import { seededRandom, systemClock } from '../util/clock.js';
import { Acks } from './acks.js';
import { ConnectionPart } from './connection.js';
import { ClientContext, resolveOptions } from './context.js';
import type { GroupView } from './groups.js';
import { GroupState } from './group-state.js';
import {
  readConversations,
  readHistory,
  type ConversationSummary,
  type HistoryMessage,
  type HistoryOptions,
} from './history.js';
import { Inbound } from './inbound.js';
import { listInvites, type GroupInvite } from './invites.js';
import type { KeysReadyOptions } from './key-wait.js';
import { LiveEntries, Outbox, assertMessageId, storeRefused } from './outbox.js';
import { PlainStage } from './plain.js';
import { Presence } from './presence.js';
import { Receipts } from './receipts.js';
import {
  DEFAULT_BACKOFF_BASE_MS,
  DEFAULT_BACKOFF_MAX_MS,
  untilOpen,
  type ConnectedOptions,
} from './reconnect.js';
import { RequestTable } from './requests.js';
import { SealedStage, bundlesOf } from './sealed.js';
import type { Stage } from './stage.js';
import type { ClientStore, InboundMessage, OutboxEntry, StateWrite } from './store.js';
import type { ClientEvents, ClientOptions, ConnectionState, MessageInfo, SendOptions } from './types.js';
import { NOTICES_WITHOUT_REQUEST, errorOf } from './wire.js';

export { isGroupId };

/**
 * The client engine: a durable outbox that sends in order and resends until acked, and an
 * inbound path that persists, dedupes and orders before it acks. Create with {@link createClient}.
 */
export class PostboxClient extends EventEmitter<ClientEvents> {
  readonly store: ClientStore;
  private readonly ctx: ClientContext;
  private readonly link: ConnectionPart;
  private readonly requests: RequestTable;
  private readonly outbox: Outbox;
  private readonly acks: Acks;
  private readonly inbound: Inbound;
  private readonly receipts: Receipts;
  private readonly groupState: GroupState;
  private readonly presence: Presence;
  private readonly stage: Stage;

  constructor(options: ClientOptions) {
    super();
    this.store = options.store;
    if (options.device !== undefined) assertDeviceId(options.device, 'device');
    const ctx = (this.ctx = new ClientContext(
      options.store,
      options.clock ?? systemClock,
      options.random ?? Math.random,
      resolveOptions(options),
      (event, ...args) => void (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args),
    ));
    const requests = (this.requests = new RequestTable(ctx));
    this.acks = new Acks(ctx);
    this.presence = new Presence(ctx, requests, (build) => requests.call(build));
    const inbound = (this.inbound = new Inbound(ctx, this.acks, (c, u, d) =>
      this.presence.endTyping(c, u, d),
    ));
    const live = new LiveEntries();
    const outbox = (this.outbox = new Outbox(ctx, requests, live, {
      send: (e, r) => this.stage.send(e, r),
      refused: (id, r, error) => this.stage.refused(id, r, error),
      applyStatus: (id, status, by, error) => this.receipts.applyStatus(id, status, by, error),
    }));
    const receipts = (this.receipts = new Receipts(ctx, live, (id) => outbox.unqueue(id)));
    const groups = (this.groupState = new GroupState(ctx, outbox, (g) => this.stage.membersLeft(g)));
    this.stage = options.crypto
      ? new SealedStage(ctx, options.crypto, options, {
          requests,
          outbox,
          inbound,
          reached: (e, user) => receipts.reached(e, user),
          othersIn: (group, me) => groups.othersIn(group, me),
        })
      : new PlainStage(ctx, inbound);
    this.link = new ConnectionPart(
      ctx,
      options.transport,
      options.credentials,
      options.device,
      {
        baseMs: options.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS,
        maxMs: options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS,
      },
      {
        load: async () => {
          await outbox.load();
          this.stage.keyWait?.requeued();
          await groups.load();
          await inbound.load();
        },
        frame: (f) => this.onFrame(f),
        drain: () => outbox.pump(),
        welcome: (w) => {
          outbox.welcome(w);
          this.acks.welcome(w);
          this.stage.welcome(ctx.me!);
          this.presence.welcome();
        },
        opened: () => {
          this.acks.flush();
          outbox.pump();
          this.stage.keyWait?.connected();
          this.presence.opened();
        },
        lost: () => {
          this.acks.stop();
          outbox.rewind();
          this.presence.lost();
          requests.fail();
        },
        closed: () => {
          this.acks.stop();
          inbound.close();
          this.presence.close();
          this.stage.keyWait?.close();
          outbox.close();
        },
      },
    );
    if (options.autoStart ?? true) this.start();
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.ctx.state;
  }

  /** Who the server says this device is (after the first `welcome`). */
  get identity(): { user: string; device: string } | undefined {
    return this.ctx.me;
  }

  /**
   * Connects (and keeps reconnecting) until {@link close}. After a `close()` (or before the
   * first start, with `autoStart: false`) it connects at once, its waits starting again from the
   * shortest; while the client waits to reconnect it is {@link reconnectNow}; otherwise (open,
   * connecting) it does nothing.
   */
  start(): void {
    if (this.ctx.state === 'backoff') {
      this.reconnectNow();
      return;
    }
    // A fresh start: nothing left of an earlier run's waits.
    if (this.ctx.state === 'idle' || this.ctx.state === 'closed') this.link.start();
  }

  /**
   * Connects at once if the client is waiting to reconnect (state `backoff`). Call it when the
   * network comes back (a browser `online` event, React Native NetInfo) or the app returns to the
   * foreground (`visibilitychange`, AppState): the next attempt then does not wait out a backoff
   * that grew while the network was down. Safe to call as often as those events fire: it skips at
   * most one wait per `backoffMaxMs` (later calls return false), never a wait the server asked
   * for (1013 try again later), and only its first skip after a connection was lost starts the
   * waits again from the shortest, so an app calling it in a loop cannot hammer a server that is
   * down (see docs/engines.md, "Reconnecting"). Does nothing while open, connecting, closed or
   * not yet started.
   * @returns true when it started a connection attempt.
   * @example
   * ```ts
   * window.addEventListener('online', () => client.reconnectNow());
   * ```
   */
  reconnectNow(): boolean {
    if (this.ctx.state !== 'backoff') return false;
    return this.link.reconnects.hurry();
  }

  /**
   * Resolves when the connection is open: at once if it is, else on the next `open`. Rejects with
   * `closed` if the client is closed, or closes while waiting (by {@link close}, or for good:
   * refused static credentials, say, as its `cause`); with `disconnected` after `timeoutMs`; with
   * the signal's reason when `signal` aborts. A client not started yet is waited for: a later
   * {@link start} may open it. Sends need none of this (they wait in the outbox); it is for what
   * needs a live connection, like {@link setPushToken} or {@link approveDevice}.
   * @example
   * ```ts
   * await client.connected({ timeoutMs: 10_000 });
   * await client.setPushToken({ kind: 'fcm', token });
   * ```
   */
  connected(options: ConnectedOptions = {}): Promise<void> {
    return untilOpen(
      {
        state: () => this.ctx.state,
        lastError: () => this.link.lastError,
        subscribe: (fn) => {
          this.on('connection', fn);
          return () => this.off('connection', fn);
        },
      },
      this.ctx.clock,
      options,
    );
  }

  /**
   * Resolves when `user` can be written to with encryption: a device of theirs has published keys
   * (at once when one is known to, and at once without a crypto adapter). A send before that is
   * not lost: it is held, `pending`, until the keys come or `keyWaitMs` passes (then `failed`,
   * `no_keys`). Waits also for a user with no device yet; rejects with `no_keys` after
   * `timeoutMs`, with the signal's reason when `signal` aborts, and with `closed` when the client
   * is or becomes closed. See docs/encryption.md, "A new contact: when can I write?".
   * @example
   * ```ts
   * await client.keysReady('bob', { timeoutMs: 60_000 }); // bob's phone has published its keys
   * ```
   */
  async keysReady(user: string, options: KeysReadyOptions = {}): Promise<void> {
    assertUserId(user, 'user');
    if (this.ctx.state === 'closed') throw new PostboxError('closed', 'client is closed');
    await this.stage.keyWait?.keysReady(user, options);
  }

  /**
   * Queues a message to user `to`. Resolves with the message id once the outbox entry (id and
   * sequence number, one atomic write) is committed in the client store: from then on the message
   * survives a crash of the app and will be sent, resent until the server acks it. Until it
   * resolves, a crash may have lost it or kept it (the app finds out with {@link history} at
   * start). The `status` event then reports `pending`, `sent` (✓, durable on the server),
   * `delivered` (✓✓), `read`.
   *
   * Rejects, and the message was never stored and will never be sent, with a PostboxError:
   * `too_large` when the body is over the limit, `invalid_frame` when `to` is not a valid user id
   * (1–128 characters, not a group id) or `body` is not a Uint8Array, `closed` after
   * {@link close}, `unavailable` (with the store's error as `cause`) when the client store failed
   * to write it. The body is copied when `send` is called: the caller may reuse its buffer.
   * @example
   * ```ts
   * const id = await client.send('bob', new TextEncoder().encode('hi bob'));
   * // the message is in the outbox on disk: it will reach bob, even if the app dies now
   * ```
   */
  send(to: string, body: Uint8Array, options?: SendOptions): Promise<string> {
    // Not `async`: the promise of the store task is the caller's, with no wrapper around it.
    try {
      if (isGroupId(to)) throw new PostboxError('invalid_frame', 'group ids start with #: use sendToGroup');
      assertUserId(to, 'recipient');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.queueMessage(to, body, options?.id);
  }

  /**
   * Queues a message to a group; resolves with its id once it is committed in the client store,
   * and rejects when it is not, exactly as {@link send}. The server stores it once and delivers it
   * to every device of every member at commit time (and to this user's other devices). `status`
   * reports `sent`, then `delivered` when every member (as this device knew the group when
   * sending) has it and `read` when every one has read it; `memberStatus` and {@link messageInfo}
   * give each member's receipt. A sender who is not a member gets `failed` (`not_member`). The
   * recipients it is counted against are stored in the same atomic write as the message.
   */
  sendToGroup(group: string, body: Uint8Array, options?: SendOptions): Promise<string> {
    try {
      assertGroupId(group, 'group');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.queueMessage(group, body, options?.id);
  }

  /**
   * One conversation's messages, received and sent (never receipts), newest first, from the
   * client store: `limit` of them (default 50), older than the `before` cursor when given. Read
   * it at start to draw a chat and to catch up on anything the app's own state missed (a crash
   * between the store commit and the app's `message` handler, say). Works offline.
   * @example
   * ```ts
   * const page = await client.history('bob', { limit: 20 });
   * const older = await client.history('bob', { before: page.at(-1)?.cursor, limit: 20 });
   * ```
   */
  history(conv: string, options: HistoryOptions = {}): Promise<HistoryMessage[]> {
    return this.ctx.serial(async () => readHistory(this.store, conv, options, await this.ctx.self()));
  }

  /**
   * Every conversation with a message, the most recently active first, each with its latest
   * message and its number of unread received messages. From the client store; works offline.
   */
  conversations(): Promise<ConversationSummary[]> {
    return this.ctx.serial(async () => readConversations(this.store, await this.ctx.self()));
  }

  /** Queues a message; rejects (never throws) when it may not be queued. */
  private queueMessage(to: string, body: Uint8Array, given?: string): Promise<string> {
    const ctx = this.ctx;
    try {
      if (ctx.state === 'closed') throw new PostboxError('closed', 'client is closed');
      if (!(body instanceof Uint8Array)) throw new PostboxError('invalid_frame', 'body must be a Uint8Array');
      if (body.byteLength > ctx.opts.maxBodyBytes) {
        throw new PostboxError(
          'too_large',
          `body of ${body.byteLength} bytes is over ${ctx.opts.maxBodyBytes}`,
        );
      }
      if (given !== undefined) assertMessageId(given);
    } catch (e) {
      return Promise.reject(e);
    }
    const id = given ?? ctx.ulid();
    // `new Uint8Array`, not `slice`: a Node Buffer's `slice` is a view of the caller's memory.
    const copy = new Uint8Array(body);
    // The common send (no id of the caller's to look up, no group bookkeeping) queues the store
    // write itself: no async function around it, in every message's life.
    if (given === undefined && !isGroupId(to)) return ctx.serial(() => this.enqueueMessage(id, to, copy));
    return ctx.serial(async () => {
      let state: StateWrite[] | undefined;
      try {
        // A given id already stored: this send was made before (see SendOptions.id).
        if (given !== undefined && (await this.store.outgoing(given))) return given;
        // A group message's bookkeeping goes in the same atomic write: a crash in between would
        // send a message whose receipts count against no one, so its ✓✓ never came.
        state = isGroupId(to) ? await this.groupState.sendState(id, to) : undefined;
      } catch (e) {
        throw storeRefused('message', e);
      }
      return this.enqueueMessage(id, to, copy, state);
    });
  }

  /**
   * Writes a message to the outbox (with `state` in the same atomic write), then queues it: the
   * `pending` status, and the outbox sends it when it can. A store failure rejects with
   * `unavailable` (`storeRefused`), and nothing was queued.
   */
  private enqueueMessage(id: string, to: string, body: Uint8Array, state?: StateWrite[]): Promise<string> {
    const ctx = this.ctx;
    let stored: Promise<OutboxEntry>;
    try {
      stored = this.store.enqueue(
        { id, kind: 'msg', to, conv: to, body, createdAt: ctx.clock.now() },
        true,
        state,
      );
    } catch (e) {
      stored = Promise.reject(e as Error); // refused below, as a rejection is
    }
    return stored.then(
      (entry) => {
        this.outbox.push(entry);
        ctx.emit('status', { id, conv: to, status: 'pending' });
        this.outbox.pump();
        return id;
      },
      (e: unknown) => {
        throw storeRefused('message', e);
      },
    );
  }

  // ------------------------------------------------------------------ groups

  /**
   * Creates a group named `name` with this user as its admin and `members` (other users, at most
   * 1,023 of them, or the server's lower cap) as members. The request goes through the durable
   * outbox, so it survives being offline and restarts; the promise resolves with the group id
   * when the server has committed it (every member device then gets the group), and rejects with
   * `unknown_recipient` (a member is not registered: no device, not in the server's user
   * directory), `group_full`, or `closed`.
   * @param id - the group id to use (`#` and 1-63 of [0-9A-Za-z_-]); a fresh one by default.
   */
  async createGroup(name: string, members: string[], id?: string): Promise<string> {
    const group = id ?? `#${this.ctx.ulid()}`;
    await this.groupState.request(group, { op: 'create', m: members, n: name });
    return group;
  }

  /** Adds users to a group (admins only: else `forbidden`; past the cap `group_full`). */
  addMembers(group: string, users: string[]): Promise<void> {
    return this.groupState.request(group, { op: 'add', m: users });
  }

  /** Removes users from a group (admins only). A removed member gets nothing sent after it. */
  removeMembers(group: string, users: string[]): Promise<void> {
    return this.groupState.request(group, { op: 'remove', m: users });
  }

  /** Leaves a group. A last admin who leaves hands the role to the longest-standing member. */
  leaveGroup(group: string): Promise<void> {
    return this.groupState.request(group, { op: 'leave' });
  }

  /** Makes members admins (admins only). */
  promoteMembers(group: string, users: string[]): Promise<void> {
    return this.groupState.request(group, { op: 'promote', m: users });
  }

  /** Makes admins plain members (admins only; the last admin cannot be demoted). */
  demoteMembers(group: string, users: string[]): Promise<void> {
    return this.groupState.request(group, { op: 'demote', m: users });
  }

  /** Renames a group (admins only). */
  renameGroup(group: string, name: string): Promise<void> {
    return this.groupState.request(group, { op: 'rename', n: name });
  }

  /**
   * Accepts a pending invite: this user joins the group (every member is told, and this device
   * gets the group). Rejects with `forbidden` when there is no such invite.
   */
  acceptGroupInvite(group: string): Promise<void> {
    return this.groupState.request(group, { op: 'accept' });
  }

  /** Declines a pending invite; this user's other devices drop it too. */
  declineGroupInvite(group: string): Promise<void> {
    return this.groupState.request(group, { op: 'decline' });
  }

  /** The pending group invites this device knows, oldest first. */
  groupInvites(): Promise<GroupInvite[]> {
    return listInvites(this.store);
  }

  /** A group as this device knows it (after its membership events arrived), or undefined. */
  group(id: string): GroupView | undefined {
    return this.groupState.view(id);
  }

  /** Every group this device knows, including ones this user has left. */
  groups(): GroupView[] {
    return this.groupState.all();
  }

  /**
   * The safety number of this device and a peer device (60 digits, identical on both), for the
   * users to compare in person or over another channel. Undefined without encryption or before
   * the two devices have exchanged a message.
   */
  async safetyNumber(user: string, device: string): Promise<string | undefined> {
    return this.stage.safetyNumber(user, device);
  }

  /**
   * Marks a peer device's current identity key as verified (after comparing safety numbers).
   * Under `identityPolicy: 'block'` this releases the messages that waited for it. False when
   * the device's identity is not known.
   */
  async verifyIdentity(user: string, device: string): Promise<boolean> {
    return this.stage.verify(user, device);
  }

  /**
   * The "message info" view of a message this device sent: its aggregate status and, for a
   * group message, each member's receipt. Undefined for an unknown id.
   */
  messageInfo(id: string): Promise<MessageInfo | undefined> {
    return this.ctx.serial(() => this.receipts.info(id));
  }

  // ------------------------------------------------------------------ devices, presence, typing

  /**
   * Approves linking the new device that shows `code` (see the `linkCode` event) to this user.
   * Needs a live connection. Rejects with `forbidden` for a wrong or expired code.
   */
  approveDevice(code: string): Promise<void> {
    return this.requests.call((r) => ({ t: 'lnk', r, code }));
  }

  /**
   * Unlinks a device of this user (this one included): the server deletes it and its inbox and
   * closes its connection; it must be linked (approved) again to come back. Rejects with
   * `invalid_frame` for an invalid device id.
   */
  async unlinkDevice(device: string): Promise<void> {
    assertDeviceId(device, 'device');
    return this.requests.call((r) => ({ t: 'unl', r, d: device }));
  }

  /**
   * Registers this device's push token with the server (`kind`: `apns`, `fcm`, `webpush` or the
   * app's own; `token` as the platform gave it), or removes it with `undefined`. The server then
   * wakes this device, content-free, when something lands in its inbox while it has no
   * connection (see docs/push.md). Needs a live connection; call it again when the platform
   * hands out a new token (calling it in an `open` handler is cheap and always right).
   */
  setPushToken(token: { kind: string; token: string } | undefined): Promise<void> {
    return this.requests.call((r) =>
      token ? { t: 'ptok', r, k: token.kind, tok: token.token } : { t: 'ptok', r },
    );
  }

  /**
   * Follows a user's presence (a chat on screen): `presence` events now and on every change,
   * re-subscribed after reconnects until {@link unwatchPresence}. Rejects with `forbidden` when
   * the server's privacy rule hides that user from this one (default: only users who share a
   * conversation see each other), and with `invalid_frame` for an invalid user id.
   */
  async watchPresence(user: string): Promise<void> {
    assertUserId(user, 'user');
    return this.presence.watch(user);
  }

  /** Stops following a user's presence. */
  unwatchPresence(user: string): void {
    this.presence.unwatch(user);
  }

  /**
   * Tells the peer (or the group's online members) that this user is typing (`on`) or stopped.
   * Call it on every keystroke: `on` goes out at most every `typingRefreshMs`, `off` once.
   * Nothing is stored or queued: when offline, it is dropped.
   * @throws PostboxError `invalid_frame` when `conv` is neither a user nor a group id.
   */
  setTyping(conv: string, on: boolean): void {
    this.presence.setTyping(conv, on);
  }

  /**
   * Marks the conversation's received messages read, up to and including `upTo` (all when
   * omitted), and sends read receipts to their senders through the outbox (so they survive
   * being offline). Resolves when the receipts are durably queued.
   */
  markRead(conv: string, upTo?: string): Promise<void> {
    const ctx = this.ctx;
    return ctx.serial(async () => {
      // What is unread, when the store can say it by itself; the whole conversation when the
      // store cannot, or when `upTo` is not among the unread (its place among them is then
      // known only from the whole arrival order).
      const store = this.store;
      let messages = (await store.unreadInbound?.(conv)) ?? (await store.inbound(conv));
      const at = (list: InboundMessage[]) =>
        upTo === undefined ? list.length - 1 : list.findIndex((m) => m.id === upTo);
      let end = at(messages);
      if (end < 0 && upTo !== undefined && store.unreadInbound)
        end = at((messages = await store.inbound(conv)));
      const bySender = new Map<string, string[]>();
      for (let i = 0; i <= end; i++) {
        const m = messages[i]!;
        // Only others' messages get receipts: not copies of this user's messages sent from its
        // other devices (in a 1:1 chat their sender is not the conversation's peer).
        if (m.read || m.held || m.from === ctx.me?.user) continue;
        if (!isGroupId(conv) && m.from !== m.conv) continue;
        let ids = bySender.get(m.from);
        if (!ids) bySender.set(m.from, (ids = []));
        ids.push(m.id);
      }
      for (const [from, ids] of bySender) {
        for (let i = 0; i < ids.length; i += 512) {
          const chunk = ids.slice(i, i + 512);
          const entry = await this.store.enqueue(
            { id: ctx.ulid(), kind: 'read', to: from, conv, ids: chunk, createdAt: ctx.clock.now() },
            false,
          );
          await this.store.markRead(chunk);
          this.outbox.push(entry);
        }
      }
      this.outbox.pump();
    });
  }

  /** Resolves when every queued store operation so far has finished (useful in tests). */
  settled(): Promise<void> {
    return this.ctx.serial(async () => {});
  }

  /** Outgoing items not yet acked by the server. */
  get unsent(): number {
    return this.outbox.unsent + (this.stage.keyWait?.size ?? 0);
  }

  /** Closes the connection and stops reconnecting. The store stays open for its owner. */
  async close(): Promise<void> {
    this.link.close();
    await this.ctx.drained();
  }

  /** A frame that is not about the connection itself, to the part that owns it. */
  private onFrame(frame: ServerFrame): void {
    const ctx = this.ctx;
    switch (frame.t) {
      case 'ok':
        return this.onOk(frame.r);
      case 'err':
        return this.onErr(frame.r, errorOf(frame));
      case 'kb': {
        const row = this.requests.peek(frame.r);
        if (row?.kind !== 'keys') return;
        this.requests.remove(frame.r);
        if (frame.w) this.stage.keyWait?.noteKeyless(frame.w);
        return row.resolve(bundlesOf(frame));
      }
      case 'kr':
        return this.stage.keyWait?.published(frame.u);
      case 'klow':
        return this.stage.keysLow(frame.pk, frame.kpk);
      case 'msg':
        // A server sends entries only after welcome; ignore a broken one.
        if (ctx.me) this.stage.open(frame, ctx.me);
        return;
      case 'st':
        // A status's ack is quiet: nobody waits for it, and a status delivered again after a
        // reconnect changes nothing (statuses only move forward: ack-pacing.ts).
        return this.inbound.accept(frame.o, () => this.receipts.onStatus(frame), true);
      case 'gev':
        return this.inbound.accept(frame.o, () => this.groupState.apply(frame));
      case 'gap':
        // Acked after, in inbox order (not acked while this device has no identity yet).
        if (ctx.me) this.inbound.accept(frame.o, () => this.inbound.dropped(frame, ctx.me!));
        return;
      case 'pres':
        return this.presence.onPresence(frame);
      case 'typn':
        return this.presence.onTyping(frame);
    }
  }

  private onOk(r: number): void {
    const row = this.requests.peek(r);
    if (!row) return;
    switch (row.kind) {
      case 'ctl':
        this.requests.remove(r);
        return row.ok();
      case 'call':
        this.requests.remove(r);
        return row.resolve();
      case 'item':
        return this.outbox.ok(r, row.id);
      // A key query waits for its `kb`.
    }
  }

  private onErr(r: number | undefined, error: PostboxError): void {
    const row = this.requests.peek(r);
    switch (row?.kind) {
      case 'keys':
      case 'call':
        this.requests.remove(r!);
        return row.reject(error);
      case 'ctl':
        this.requests.remove(r!);
        return row.err(error);
      case 'item':
        return this.outbox.refused(r!, row.id, error);
    }
    if (r === undefined && NOTICES_WITHOUT_REQUEST.has(error.code)) return;
    this.emit('error', error);
    if (error.retryable) this.ctx.drop(`server error ${error.code}`);
  }
}

/**
 * Creates a client engine and (unless `autoStart: false`) connects it.
 * @example
 * const client = createClient({ transport, store: memoryClientStore(), credentials: token });
 * client.on('message', (m) => render(m));
 * const id = await client.send('bob', new TextEncoder().encode('hi')); // stored: it will be sent
 */
export function createClient(options: ClientOptions): PostboxClient {
  return new PostboxClient(options);
}

export { seededRandom };
