/**
 * One device across many tabs (`postbox/client/tabs`): the tabs of one app elect a leader, which
 * alone opens the client (its store, its one connection); the others send and receive through
 * it over a BroadcastChannel. When the leader's tab closes another takes over. Browser-safe.
 * See docs/browser.md, "Many tabs".
 * @packageDocumentation
 */
import { EventEmitter } from 'eventemitter3';
import { PostboxError, isPostboxError, type ErrorCode } from '../../protocol/errors.js';
import { systemClock, type Clock } from '../../util/clock.js';
import { ulidFactory } from '../../util/ulid.js';
import type { PostboxClient } from '../engine.js';
import type { ClientEvents, ConnectionState } from '../types.js';
import {
  LeaseElection,
  lockElection,
  type ChannelLike,
  type Election,
  type LockManagerLike,
} from './election.js';
import { EVENTS, envelope, readFrame, type CallName, type TabFrame } from './wire.js';
import { Follower } from './follower.js';

export type { ChannelLike, LockManagerLike } from './election.js';

/** Options of {@link tabClient}. */
export interface TabClientOptions {
  /**
   * The device's name among the origin's locks and channels: the same in every tab of one
   * device, different for two (two users signed in on one origin).
   */
  name: string;
  /**
   * Opens this tab's client when it becomes the leader: its store (IndexedDB, shared by every tab),
   * transport and credentials, with `autoStart` left on. Closed (client and store) when the tab
   * stops leading.
   */
  open(): Promise<PostboxClient>;
  /**
   * The Web Locks manager; `null` uses the BroadcastChannel lease even where locks exist.
   * @default globalThis.navigator.locks
   */
  locks?: LockManagerLike | null;
  /** Opens the channel between the tabs. @default (name) => new BroadcastChannel(name) */
  channel?: (name: string) => ChannelLike;
  /** A follower's call with no answer is sent again this often (to whichever tab leads then). @default 500 */
  retryMs?: number;
  /** A follower's call no leader answered within this rejects with `unavailable`. @default 15000 */
  callTimeoutMs?: number;
  /** Lease fallback only: the leader's heartbeat. @default 1000 */
  heartbeatMs?: number;
  /** Lease fallback only: a leader silent this long is gone. @default 3000 */
  leaseMs?: number;
  /** @default systemClock */
  clock?: Clock;
}

/** Events of a {@link TabClient}: the client's, plus the tab's own. */
export interface TabClientEvents extends Pick<ClientEvents, (typeof EVENTS)[number] | 'error'> {
  /** This tab became the leader or a follower. */
  role: (role: 'leader' | 'follower') => void;
  /**
   * Another tab took over (or this one did): events of the switch may be missed, so redraw from
   * {@link TabClient.history} and {@link TabClient.conversations}.
   */
  resync: () => void;
}

/**
 * The client as every tab sees it: the calls and events of {@link PostboxClient} that a page
 * needs, the same in the leader tab (straight to its client) and in followers (through the
 * leader). A message sent from any tab is stored once, under an id made by the sending tab, so a
 * hand-off the leader answered late or not at all is sent again safely; every tab gets each
 * `message` event at most once.
 */
export class TabClient extends EventEmitter<TabClientEvents> {
  private _role: 'leader' | 'follower' = 'follower';
  private client: PostboxClient | undefined;
  private opening: Promise<PostboxClient> | undefined;
  private readonly channel: ChannelLike;
  private readonly election: Election;
  private readonly lease: LeaseElection | undefined;
  private readonly follower: Follower;
  private readonly tab: string;
  private readonly ulid: () => string;
  private closed = false;

  constructor(private readonly options: TabClientOptions) {
    super();
    const clock = options.clock ?? systemClock;
    this.ulid = ulidFactory(clock, Math.random);
    this.tab = this.ulid();
    this.channel = (options.channel ?? ((n) => new BroadcastChannel(n) as ChannelLike))(
      `postbox-tabs:${options.name}`,
    );
    this.channel.addEventListener('message', (ev) => this.onFrame(readFrame(ev.data)));
    this.follower = new Follower(
      this.tab,
      (f) => this.post(f),
      clock,
      { retryMs: options.retryMs ?? 500, callTimeoutMs: options.callTimeoutMs ?? 15_000 },
      (name, args) => (this.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args),
    );
    const hooks = { lead: () => this.lead(), follow: () => void this.stepDown() };
    const locks =
      options.locks === undefined
        ? (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks
        : (options.locks ?? undefined);
    if (locks) {
      this.election = lockElection(locks, `postbox-leader:${options.name}`, hooks);
    } else {
      this.lease = new LeaseElection(
        this.tab,
        (f) => this.post(f),
        clock,
        {
          heartbeatMs: options.heartbeatMs ?? 1000,
          leaseMs: options.leaseMs ?? 3000,
          claimMs: options.heartbeatMs ?? 1000,
        },
        hooks,
      );
      this.election = this.lease;
    }
    this.post({ k: 'who', tab: this.tab });
  }

  /** Whether this tab leads (owns the client and the connection) or follows. */
  get role(): 'leader' | 'follower' {
    return this._role;
  }

  /** The connection state of the leader's client, as this tab last heard it. */
  get state(): ConnectionState {
    return this.client?.state ?? (this.follower.state as ConnectionState);
  }

  /** {@link PostboxClient.send}: resolves with the id once the message is stored (by whichever tab leads). */
  send(to: string, body: Uint8Array): Promise<string> {
    return this.call('send', [to, body, this.ulid()]) as Promise<string>;
  }
  /** {@link PostboxClient.sendToGroup}, as {@link TabClient.send}. */
  sendToGroup(group: string, body: Uint8Array): Promise<string> {
    return this.call('sendToGroup', [group, body, this.ulid()]) as Promise<string>;
  }
  /** {@link PostboxClient.history}. */
  history(...args: Parameters<PostboxClient['history']>): ReturnType<PostboxClient['history']> {
    return this.call('history', args) as ReturnType<PostboxClient['history']>;
  }
  /** {@link PostboxClient.conversations}. */
  conversations(): ReturnType<PostboxClient['conversations']> {
    return this.call('conversations', []) as ReturnType<PostboxClient['conversations']>;
  }
  /** {@link PostboxClient.markRead}. */
  markRead(conv: string, upTo?: string): Promise<void> {
    return this.call('markRead', upTo === undefined ? [conv] : [conv, upTo]) as Promise<void>;
  }
  /** {@link PostboxClient.messageInfo}. */
  messageInfo(id: string): ReturnType<PostboxClient['messageInfo']> {
    return this.call('messageInfo', [id]) as ReturnType<PostboxClient['messageInfo']>;
  }
  /** {@link PostboxClient.setTyping} (dropped when no tab leads, like a notice sent offline). */
  setTyping(conv: string, on: boolean): void {
    this.tell('setTyping', [conv, on]);
  }
  /** {@link PostboxClient.watchPresence}; kept for this tab and asked of every new leader. */
  watchPresence(user: string): Promise<void> {
    this.follower.watched.add(user);
    return this.call('watchPresence', [user]) as Promise<void>;
  }
  /** {@link PostboxClient.unwatchPresence}. */
  unwatchPresence(user: string): void {
    this.follower.watched.delete(user);
    this.tell('unwatchPresence', [user]);
  }
  /** {@link PostboxClient.reconnectNow}, on the leader's client. */
  reconnectNow(): void {
    this.tell('reconnectNow', []);
  }

  /** Leaves the tabs: a leader closes its client and hands over at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.follower.close();
    // The client first, then the lock: the next leader's connection never meets this one's.
    await this.stepDown();
    this.election.stop();
    this.channel.close();
  }

  private call(m: CallName, a: unknown[]): Promise<unknown> {
    if (this.closed) return Promise.reject(new PostboxError('closed', 'the tab client is closed'));
    if (this._role === 'leader') return this.local(m, a);
    return this.follower.call(m, a);
  }

  /** A call whose outcome nobody waits for: sent once, never again (a late typing notice is wrong). */
  private tell(m: CallName, a: unknown[]): void {
    if (this.closed) return;
    if (this._role === 'leader') this.local(m, a).catch(() => {});
    else this.follower.tell(m, a);
  }

  /** Runs a call on this tab's client (opening it first if the tab just became leader). */
  private async local(m: CallName, a: unknown[]): Promise<unknown> {
    const client = await (this.opening ?? Promise.reject(new PostboxError('unavailable', 'not leading')));
    switch (m) {
      case 'send':
        return client.send(a[0] as string, a[1] as Uint8Array, { id: a[2] as string });
      case 'sendToGroup':
        return client.sendToGroup(a[0] as string, a[1] as Uint8Array, { id: a[2] as string });
      default:
        return (client[m] as (...args: unknown[]) => unknown)(...a);
    }
  }

  private lead(): void {
    if (this.closed) return;
    const was = this._role;
    this._role = 'leader';
    this.follower.leaderIs(this.tab);
    this.opening = this.options.open().then((client) => {
      this.client = client;
      for (const name of EVENTS) {
        client.on(name, (...args: unknown[]) => {
          (this.emit as (n: string, ...a: unknown[]) => boolean)(name, ...args);
          this.post({ k: 'ev', n: name, a: args.map(portable) });
        });
      }
      client.on('error', (e) => this.emit('error', e));
      for (const user of this.follower.watched) client.watchPresence(user).catch(() => {});
      this.post({ k: 'lead', tab: this.tab, state: client.state });
      return client;
    });
    this.opening.catch((e: unknown) => this.emit('error', e));
    // Calls this tab had made to the old leader are this tab's own to answer now.
    this.follower.takeOver((m, a) => this.local(m, a));
    this.emit('role', 'leader');
    if (was === 'follower' && this.follower.hadLeader) this.emit('resync');
  }

  private async stepDown(): Promise<void> {
    const opening = this.opening;
    this.opening = undefined;
    this.client = undefined;
    if (this._role === 'leader' && !this.closed) {
      this._role = 'follower';
      this.emit('role', 'follower');
    }
    const client = await opening?.catch(() => undefined);
    if (!client) return;
    client.removeAllListeners();
    await client.close();
    await client.store.close();
  }

  private onFrame(f: TabFrame | undefined): void {
    if (!f || this.closed) return;
    switch (f.k) {
      case 'beat':
      case 'claim':
      case 'bye':
        this.lease?.onFrame(f);
        return;
      case 'call':
        if (this._role === 'leader') this.answer(f);
        return;
      case 'who':
        if (this._role === 'leader' && this.client) {
          this.post({ k: 'lead', tab: this.tab, state: this.client.state });
        }
        return;
      default:
        if (this._role === 'follower') this.follower.onFrame(f);
    }
  }

  private answer(f: Extract<TabFrame, { k: 'call' }>): void {
    this.local(f.m, f.a).then(
      (v) => this.post({ k: 'ret', rid: f.rid, v: portable(v) }),
      (e: unknown) => this.post({ k: 'ret', rid: f.rid, e: errorFrame(e) }),
    );
  }

  private post(f: TabFrame): void {
    if (!this.closed || f.k === 'bye') this.channel.postMessage(envelope(f));
  }
}

/** An error as a frame: PostboxErrors keep their code; anything else is `internal`. */
function errorFrame(e: unknown): { code: ErrorCode; message: string } {
  if (isPostboxError(e)) return { code: e.code, message: e.message };
  return { code: 'internal', message: e instanceof Error ? e.message : String(e) };
}

/** A value the structured clone takes: errors become plain `{ code, message }`. */
function portable(v: unknown): unknown {
  return v instanceof Error ? errorFrame(v) : v;
}

/**
 * Starts this tab's part of the device: it leads (opening the client with `open`) or follows
 * (calling through the leader). Use the returned {@link TabClient} where a page would use the
 * client.
 * @example
 * ```ts
 * const chat = tabClient({
 *   name: `postbox-${user}`,
 *   open: async () =>
 *     createClient({ store: await openIndexedDbClientStore({ name: `postbox-${user}` }), transport, credentials }),
 * });
 * chat.on('message', draw);
 * await chat.send('bob', body); // stored once, by whichever tab leads
 * ```
 */
export function tabClient(options: TabClientOptions): TabClient {
  return new TabClient(options);
}
