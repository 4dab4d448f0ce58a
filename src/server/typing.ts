/**
 * Typing notices: ephemeral, never stored, rate limited per user, forwarded only to online
 * devices of users who may see them (a group's members; in 1:1, a user who consented to the
 * typist), through the cluster when there is one.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import { encodeFrame, type TypingFrame } from '../protocol/index.js';
import type { Clock } from '../util/clock.js';
import type { RateLimitedLog } from './client-log.js';
import type { ClusterAdapter, TypingNotice } from './cluster/types.js';
import { BoundedMap, type Limits } from './limits.js';
import type { Logger } from './options.js';
import type { Session } from './session.js';
import type { ServerStore } from './store.js';
import { typingFrame } from './wire.js';

/** With a cluster, a group's cached member list (for typing) is re-read after this long. */
const MEMBER_CACHE_MS = 5000;

/** Most groups whose members the typing cache keeps (the least recently read are dropped). */
const MEMBER_CACHE_MAX = 10_000;

/** What typing needs of the engine. */
export interface TypingDeps {
  store: ServerStore;
  clock: Clock;
  log: Logger;
  clientLog: RateLimitedLog;
  limits: Limits;
  cluster: ClusterAdapter | undefined;
  /** This node's open sessions of a user's devices. */
  sessionsOf(user: string): Iterable<Session> | undefined;
}

/** Forwards typing notices. */
export class Typing {
  /**
   * group id → member users and when they were read; a cache for typing notices, dropped on every
   * change made here (with a cluster, changes made on other nodes age it out). Bounded: typing in
   * ever more groups must not grow it without end.
   */
  private readonly memberCache = new BoundedMap<string, { members: Set<string>; at: number }>(
    MEMBER_CACHE_MAX,
  );

  constructor(private readonly d: TypingDeps) {}

  /** A group's membership changed here: its cached members are stale. */
  forgetGroup(group: string): void {
    this.memberCache.delete(group);
  }

  /** A `typ` frame: counted against the user's rate, then forwarded. */
  onFrame(session: Session, frame: TypingFrame, now: number): void {
    const verdict = this.d.limits.typing(session.addr!.user, now);
    if (verdict !== 'ok') {
      // Dropped, not fatal: typing is ephemeral and a flood only costs the flooder.
      if (verdict === 'first-over') session.sendError('rate_limited', 'too many typing notices');
      return;
    }
    // Ephemeral: a store that cannot say who is in the group drops the notice, nothing more.
    this.forward(session, frame).catch((e) =>
      this.d.clientLog.warn(session.addr!.user, 'typing notice dropped', e),
    );
  }

  /** Forwards a typing notice to the online devices it concerns; nothing is stored. */
  private async forward(session: Session, f: TypingFrame): Promise<void> {
    const from = session.addr!;
    const { store, cluster } = this.d;
    let users: Iterable<string>;
    if (f.g) {
      const now = this.d.clock.now();
      const cached = this.memberCache.get(f.to);
      let members = cached && (!cluster || now - cached.at < MEMBER_CACHE_MS) ? cached.members : undefined;
      if (!members) {
        const g = await store.group(f.to);
        members = new Set(g?.members.map((m) => m.user));
        if (g) this.memberCache.set(f.to, { members, at: now });
      }
      if (!members.has(from.user)) {
        session.sendError('not_member', 'not a member of the group');
        return;
      }
      users = members;
    } else {
      // Only to a user who consented to the typist (wrote to it, or took part in a group with
      // it). Dropped without an error otherwise, as for a user offline: an error would tell a
      // stranger who consented, and a client typing into a brand-new chat is no fault.
      if (!(await this.consented(from.user, f.to))) return;
      users = [f.to];
    }
    const notice: TypingNotice = { from, to: f.to, on: f.on };
    if (f.g) notice.group = true;
    if (!cluster) return this.deliver(users, notice);
    // Through the cluster, this node's own sessions included (see ClusterAdapter.typing).
    const to = [...users].filter((u) => u !== from.user);
    if (to.length > 0) await cluster.typing(to, notice);
  }

  /** Whether `target` consented to `viewer` ({@link ServerStore.related}); a store fault says no. */
  private async consented(viewer: string, target: string): Promise<boolean> {
    try {
      return await this.d.store.related(viewer, target);
    } catch (e) {
      this.d.log.warn('relation check failed', e);
      return false;
    }
  }

  /** A typing notice to this node's sessions of `users` (the typist's own user left out). */
  deliver(users: Iterable<string>, n: TypingNotice): void {
    const frame = typingFrame(n);
    let encoded: Uint8Array | undefined;
    for (const user of users) {
      if (user === n.from.user) continue;
      for (const s of this.d.sessionsOf(user) ?? []) s.sendEncoded((encoded ??= encodeFrame(frame)));
    }
  }
}
