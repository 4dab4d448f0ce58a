/**
 * Presence and typing: the users this device watches (re-subscribed on every connection), the
 * typing notices it sends (rate-limited, never queued) and the ones it shows (ended by a stop, a
 * message from that device, or a timeout).
 * @packageDocumentation
 */
import {
  PostboxError,
  isGroupId,
  isUserId,
  type ClientFrame,
  type PresenceFrame,
  type TypingNoticeFrame,
} from '../protocol/index.js';
import type { TimerHandle } from '../util/clock.js';
import type { ClientContext } from './context.js';
import { streamKey } from './namespaces.js';
import type { RequestTable } from './requests.js';
import type { PresenceChange } from './types.js';
import { conversationOf } from './wire.js';

/** The presence part of one client. */
export class Presence {
  private readonly watched = new Set<string>();
  private readonly typingSentAt = new Map<string, number>();
  private readonly typingTimers = new Map<string, TimerHandle>();
  /** Taken before `open` is emitted: a watch the app starts in its handler subscribes by itself. */
  private renewing: string[] = [];

  constructor(
    private readonly ctx: ClientContext,
    private readonly requests: RequestTable,
    /** Sends a request that resolves on `ok` (the façade's `request`). */
    private readonly request: (build: (r: number) => ClientFrame) => Promise<void>,
  ) {}

  /** Follows a user (see `PostboxClient.watchPresence`). */
  async watch(user: string): Promise<void> {
    this.watched.add(user);
    try {
      await this.request((r) => ({ t: 'sub', r, u: user }));
    } catch (e) {
      if (e instanceof Error && (e as { code?: unknown }).code === 'forbidden') this.watched.delete(user);
      throw e;
    }
  }

  /** Stops following a user. */
  unwatch(user: string): void {
    if (!this.watched.delete(user)) return;
    if (this.ctx.state === 'open') this.ctx.write({ t: 'unsub', u: user });
  }

  /** The session is accepted: the watches to renew once it is open. */
  welcome(): void {
    this.renewing = [...this.watched];
  }

  /** Subscriptions end with a connection; the ones the app still wants are renewed. */
  opened(): void {
    const renew = this.renewing;
    this.renewing = [];
    for (const user of renew) {
      const r = this.requests.add({
        kind: 'call',
        resolve: () => {},
        reject: (e) => {
          if (e.code === 'forbidden') this.watched.delete(user);
        },
      });
      this.ctx.write({ t: 'sub', r, u: user });
    }
  }

  /** The link ended: the next `on` goes out at once on the next one. */
  lost(): void {
    this.typingSentAt.clear();
  }

  /** The client closed: shown notices stop timing out. */
  close(): void {
    for (const t of this.typingTimers.values()) this.ctx.clock.clearTimeout(t);
    this.typingTimers.clear();
  }

  /** Tells others this user is typing, or stopped (see `PostboxClient.setTyping`). */
  setTyping(conv: string, on: boolean): void {
    if (!isUserId(conv) && !isGroupId(conv))
      throw new PostboxError('invalid_frame', 'not a user or group id');
    if (this.ctx.state !== 'open') return;
    const now = this.ctx.clock.now();
    const last = this.typingSentAt.get(conv);
    if (on) {
      if (last !== undefined && now - last < this.ctx.opts.typingRefreshMs) return;
      this.typingSentAt.set(conv, now);
    } else {
      if (last === undefined) return;
      this.typingSentAt.delete(conv);
    }
    const frame: ClientFrame = { t: 'typ', to: conv, on };
    if (isGroupId(conv)) frame.g = true;
    this.ctx.write(frame);
  }

  /** A watched user's presence changed. */
  onPresence(f: PresenceFrame): void {
    if (!this.watched.has(f.u)) return;
    const change: PresenceChange = { user: f.u, online: f.on };
    if (f.ls !== undefined) change.lastSeen = f.ls;
    this.ctx.emit('presence', change);
  }

  /** Someone's typing notice. */
  onTyping(f: TypingNoticeFrame): void {
    const conv = conversationOf(f.f, f.to, f.g === true, this.ctx.me?.user ?? '');
    const key = streamKey(conv, f.f, f.fd);
    this.ctx.clock.clearTimeout(this.typingTimers.get(key));
    this.typingTimers.delete(key);
    if (f.on) {
      // A notice with no stop (the sender went away) ends by itself.
      this.typingTimers.set(
        key,
        this.ctx.clock.setTimeout(() => {
          this.typingTimers.delete(key);
          this.ctx.emit('typing', { conv, user: f.f, device: f.fd, on: false });
        }, this.ctx.opts.typingTimeoutMs),
      );
    }
    this.ctx.emit('typing', { conv, user: f.f, device: f.fd, on: f.on });
  }

  /** A message from a device that was typing ends its typing notice. */
  endTyping(conv: string, user: string, device: string): void {
    // Most messages come from a device that was not typing: no key to build then.
    if (this.typingTimers.size === 0) return;
    const key = streamKey(conv, user, device);
    const t = this.typingTimers.get(key);
    if (t === undefined) return;
    this.ctx.clock.clearTimeout(t);
    this.typingTimers.delete(key);
    this.ctx.emit('typing', { conv, user, device, on: false });
  }
}
