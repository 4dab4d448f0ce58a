/**
 * Presence: who is online, announced after a debounce so a flapping connection does not storm
 * subscribers, last seen written when a user's last device leaves, and subscriptions (`sub`,
 * `unsub`) checked against the presence policy. On one node it counts this node's sessions;
 * with a cluster it follows the cluster's registry (register and unregister here, versioned
 * level events from every node).
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import type { Clock, TimerHandle } from '../util/clock.js';
import type { ClusterAdapter, PresenceEvent } from './cluster/types.js';
import type { EngineConfig, Logger, PresencePolicy, PresenceVisibility } from './options.js';
import type { Session } from './session.js';
import type { DeviceAddress, ServerStore } from './store.js';
import { presenceFrame } from './wire.js';

/**
 * A session opening while the cluster does not answer its registration within this opens anyway
 * (its entries then come by the inbox poll).
 */
const CLUSTER_REGISTER_TIMEOUT_MS = 3000;

/** Announced presence of one user and its pending offline announcement. */
interface PresenceState {
  sessions: number;
  announced: boolean;
  timer: TimerHandle | undefined;
}

/** A user whose last device left, with a cluster: its pending offline check (the debounce). */
export interface OfflineCheck {
  timer: TimerHandle;
  run: () => Promise<void>;
}

/** What presence needs of the engine. */
export interface PresenceDeps {
  store: ServerStore;
  clock: Clock;
  log: Logger;
  config: Pick<EngineConfig, 'presenceDebounceMs' | 'maxSubscriptions'>;
  policy: PresencePolicy;
  cluster: ClusterAdapter | undefined;
  /** Runs a cluster call the engine's close waits for; its failure is logged. */
  clusterOp(what: string, op: () => Promise<void>): Promise<void>;
  /** Whether the device has an open session on this node. */
  connected(addr: DeviceAddress): boolean;
  /** A user's announced presence changed (the server's `presence` event). */
  announced(user: string, online: boolean, lastSeen: number | undefined): void;
}

/** Presence of users and the sessions watching it. */
export class Presence {
  /** user → presence bookkeeping, for users online or with an offline announcement pending. */
  private readonly states = new Map<string, PresenceState>();
  /** user → sessions subscribed to its presence. */
  private readonly watchers = new Map<string, Set<Session>>();
  /**
   * With a cluster: watched user → the newest presence (highest version) applied here, so an
   * older event arriving late is dropped.
   */
  private readonly seen = new Map<string, { v: number; online: boolean; at: number }>();
  /** With a cluster: user whose last device left → its pending offline check (the debounce). */
  private readonly offlineChecks = new Map<string, OfflineCheck>();

  constructor(private readonly d: PresenceDeps) {}

  /** Whether the user has an open session on this node. */
  isOnline(user: string): boolean {
    return (this.states.get(user)?.sessions ?? 0) > 0;
  }

  /**
   * Stops every pending offline announcement (at shutdown: there is no one left to tell, and last
   * seen was stored when each left).
   */
  stopTimers(): void {
    for (const p of this.states.values()) this.d.clock.clearTimeout(p.timer);
    this.states.clear();
  }

  /** Takes the pending offline checks (at shutdown: they run now, not after the debounce). */
  takeOfflineChecks(): OfflineCheck[] {
    const checks = [...this.offlineChecks.values()];
    this.offlineChecks.clear();
    for (const c of checks) this.d.clock.clearTimeout(c.timer);
    return checks;
  }

  // ------------------------------------------------------------ one node

  /** A session of the user opened here (without a cluster). */
  up(user: string): void {
    let p = this.states.get(user);
    if (!p) this.states.set(user, (p = { sessions: 0, announced: false, timer: undefined }));
    p.sessions++;
    if (p.timer !== undefined) {
      // Back before the offline announcement: subscribers never saw it leave.
      this.d.clock.clearTimeout(p.timer);
      p.timer = undefined;
    }
    if (!p.announced) {
      p.announced = true;
      this.announce(user, true, undefined);
    }
  }

  /** A session of the user closed here (without a cluster). */
  down(user: string): void {
    const p = this.states.get(user);
    if (!p || --p.sessions > 0) return;
    const now = this.d.clock.now();
    this.d.store.setLastSeen(user, now).catch((e) => this.d.log.error('setLastSeen failed', e));
    p.timer = this.d.clock.setTimeout(() => {
      p.timer = undefined;
      if (p.sessions > 0) return;
      this.states.delete(user);
      this.announce(user, false, now);
    }, this.d.config.presenceDebounceMs);
  }

  private announce(user: string, online: boolean, lastSeen: number | undefined): void {
    this.d.announced(user, online, lastSeen);
    this.tellWatchers(user, online, lastSeen);
  }

  /** Sends a presence change to this node's sessions watching `user`. */
  private tellWatchers(user: string, online: boolean, lastSeen: number | undefined): void {
    for (const s of this.watchers.get(user) ?? []) {
      const showLastSeen = s.subscriptions?.get(user) === true;
      s.send(presenceFrame(user, online, showLastSeen ? lastSeen : undefined));
    }
  }

  // ------------------------------------------------------------ cluster

  /**
   * Registers a device that is opening a session here, before its first inbox read: from then on
   * every commit for it rings this node, and every commit before is in that read. When the
   * cluster is unreachable the session opens anyway and gets its entries by polling.
   */
  registerInCluster(addr: DeviceAddress): Promise<void> {
    const { clock } = this.d;
    return this.d.clusterOp('register', async () => {
      // A hung backend must not hold handshakes (and so the handshake cap) forever.
      let timer: TimerHandle | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = clock.setTimeout(
          () => reject(new Error(`no answer within ${CLUSTER_REGISTER_TIMEOUT_MS} ms`)),
          CLUSTER_REGISTER_TIMEOUT_MS,
        );
      });
      const r = await Promise.race([this.d.cluster!.register(addr), late]).finally(() =>
        clock.clearTimeout(timer),
      );
      const pending = this.offlineChecks.get(addr.user);
      if (pending) {
        // Back before its offline announcement: watchers never saw the user leave.
        clock.clearTimeout(pending.timer);
        this.offlineChecks.delete(addr.user);
      }
      if (r.cameOnline) this.publish(addr.user, true, r.v, clock.now());
    });
  }

  /**
   * Forgets a device that closed its session here (unless a newer session of it is open here
   * again). When that was the user's last device anywhere, last seen is written and, after the
   * debounce, the user is announced offline if no device came back meanwhile.
   */
  unregisterInCluster(addr: DeviceAddress): void {
    const c = this.d.cluster!;
    const { clock } = this.d;
    void this.d.clusterOp('unregister', async () => {
      // A newer session of the device replacing this one here binds right after this one closes.
      await undefined;
      if (this.d.connected(addr)) return;
      const r = await c.unregister(addr);
      if (!r.wentOffline || this.d.connected(addr)) return;
      const user = addr.user;
      const at = clock.now();
      this.d.store.setLastSeen(user, at).catch((e) => this.d.log.error('setLastSeen failed', e));
      const old = this.offlineChecks.get(user);
      if (old) clock.clearTimeout(old.timer);
      const run = async (): Promise<void> => {
        const [now] = await c.presence([user]);
        if (now && !now.online) this.publish(user, false, now.v, at);
      };
      const check = {
        run,
        timer: clock.setTimeout(() => {
          if (this.offlineChecks.get(user) !== check) return;
          this.offlineChecks.delete(user);
          void this.d.clusterOp('presence check', run);
        }, this.d.config.presenceDebounceMs),
      };
      this.offlineChecks.set(user, check);
    });
  }

  /** Announces a user's presence to every node watching it (this one hears it back). */
  private publish(user: string, online: boolean, v: number, at: number): void {
    this.d.announced(user, online, online ? undefined : at);
    // Never rejects by contract; a third-party adapter that does must not end the process.
    this.d
      .cluster!.publishPresence({ user, online, v, at })
      .catch((e) => this.d.log.warn('presence publish failed', e));
  }

  /** A presence event from the cluster: to this node's watchers, unless it is older than what they saw. */
  onClusterEvent(e: PresenceEvent): void {
    if (e.lost && e.origin === this.d.cluster!.nodeId) {
      // This node reaped a dead node's last device of the user: nobody else records last seen.
      this.d.store.setLastSeen(e.user, e.at).catch((err) => this.d.log.error('setLastSeen failed', err));
      this.d.announced(e.user, false, e.at);
    }
    if (!this.watchers.has(e.user)) return;
    const seen = this.seen.get(e.user);
    if (seen && seen.v >= e.v) return;
    this.seen.set(e.user, { v: e.v, online: e.online, at: e.at });
    // Levels, not edges: a second "online" (two nodes saw devices come) tells watchers nothing.
    if (seen?.online && e.online) return;
    this.tellWatchers(e.user, e.online, e.online ? undefined : e.at);
  }

  // ------------------------------------------------------------ subscriptions

  /** `sub`: privacy check, then the current state, then changes until unsubscribe or close. */
  async subscribe(session: Session, r: number, target: string): Promise<void> {
    const { store, cluster, config } = this.d;
    const viewer = session.addr!.user;
    let visible: PresenceVisibility;
    let lastSeen: number | undefined;
    try {
      visible = viewer === target ? true : await this.d.policy(viewer, target, store);
      lastSeen = visible === true ? await store.lastSeen(target) : undefined;
    } catch (e) {
      this.d.log.warn('presence policy failed', e);
      visible = false;
    }
    if (session.isClosed()) return;
    if (visible === false) {
      session.sendError('forbidden', 'presence not visible', r);
      return;
    }
    const subs = (session.subscriptions ??= new Map());
    if (!subs.has(target) && subs.size >= config.maxSubscriptions) {
      session.sendError('rate_limited', `over ${config.maxSubscriptions} subscriptions`, r);
      return;
    }
    subs.set(target, visible === true);
    let set = this.watchers.get(target);
    if (!set) {
      this.watchers.set(target, (set = new Set()));
      if (cluster) void this.d.clusterOp('watch', () => cluster.watch(target));
    }
    set.add(session);
    session.send({ t: 'ok', r });
    let online = this.states.get(target)?.announced === true;
    if (cluster) {
      try {
        const [now] = await cluster.presence([target]);
        const seen = this.seen.get(target);
        // An event newer than this read may have arrived meanwhile; the newest wins.
        if (now && (!seen || seen.v < now.v))
          this.seen.set(target, { v: now.v, online: now.online, at: this.d.clock.now() });
        online = this.seen.get(target)?.online ?? false;
      } catch (e) {
        this.d.log.warn('cluster presence read failed', e);
      }
      if (session.isClosed() || !session.subscriptions?.has(target)) return;
    }
    session.send(presenceFrame(target, online, lastSeen));
  }

  /** `unsub`. */
  unsubscribe(session: Session, target: string): void {
    session.subscriptions?.delete(target);
    this.unwatch(session, target);
  }

  /** A session closed: it watches nobody any more. */
  dropSession(session: Session): void {
    for (const target of session.subscriptions?.keys() ?? []) this.unwatch(session, target);
  }

  /** Drops one session from `target`'s watchers; the last one stops the cluster's events. */
  private unwatch(session: Session, target: string): void {
    const set = this.watchers.get(target);
    if (!set?.delete(session) || set.size > 0) return;
    this.watchers.delete(target);
    const cluster = this.d.cluster;
    if (cluster) {
      this.seen.delete(target);
      void this.d.clusterOp('unwatch', () => cluster.unwatch(target));
    }
  }
}
