/**
 * The store's health as the server engine sees it: failing from the first store call that fails
 * until the next that succeeds (a commit) or a cheap probe answers. `/readyz` of `postbox serve`
 * reads it, so a load balancer stops sending new connections to a node whose database is away
 * and sends them again once it is back, without anyone restarting the node.
 * @packageDocumentation
 */
import type { Clock, TimerHandle } from '../util/clock.js';
import type { Logger } from './options.js';
import { capable } from './capabilities.js';
import type { ServerStore } from './store.js';

/** What the engine knows of its store (see {@link PostboxServer.storeHealth}). */
export interface StoreHealth {
  /** False from a store call that failed until a commit succeeds or a probe answers. */
  ok: boolean;
  /** When `ok` last changed (engine clock, ms since the epoch); the engine's start before that. */
  since: number;
  /** Store calls that failed since `since` (0 while `ok`). */
  failures: number;
  /** While failing: the last failure. */
  error?: unknown;
}

/** What the monitor needs of the engine. */
export interface StoreHealthDeps {
  /** The store watched and probed. */
  store: ServerStore;
  /** The engine's clock (the probe's timer, `since`). */
  clock: Clock;
  /** Where the start and end of an outage are logged. */
  log: Logger;
  /** Delay between probes while failing; 0: no probes (only a successful commit recovers). */
  probeMs: number;
  /** Called on every change of `ok`. */
  changed(health: StoreHealth): void;
}

/**
 * A user id no client can have (ids are non-empty), for the probe of a store without `ping`: a
 * small indexed read that every store answers.
 */
const PROBE_USER = '';

/**
 * Tracks store health and, while the store fails, probes it every `probeMs` (one probe at a time,
 * so a black-holed database that holds each probe for its timeout is not probed in parallel).
 */
export class StoreHealthMonitor {
  private health: StoreHealth;
  private timer: TimerHandle | undefined;
  private probing = false;
  private stopped = false;

  constructor(private readonly deps: StoreHealthDeps) {
    this.health = { ok: true, since: deps.clock.now(), failures: 0 };
  }

  /** A copy of the health now. */
  get current(): StoreHealth {
    return { ...this.health };
  }

  /** A store call failed. The first failure of an outage is logged as an error, later ones quietly. */
  failed(error: unknown): void {
    if (!this.health.ok) {
      this.health.failures++;
      this.health.error = error;
      // One line per outage, not one per connection: a thousand reconnecting clients each
      // failing their handshake would otherwise bury the log (the metrics still count them).
      this.deps.log.debug('store failure', error);
      return;
    }
    this.health = { ok: false, since: this.deps.clock.now(), failures: 1, error };
    this.deps.log.error('store failing: sends are refused (1013, try again later) until it answers', error);
    this.deps.changed(this.current);
    this.schedule();
  }

  /** A store call succeeded: the store is back if it was failing. */
  succeeded(): void {
    if (this.health.ok) return;
    const { since, failures } = this.health;
    const now = this.deps.clock.now();
    this.health = { ok: true, since: now, failures: 0 };
    this.deps.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.deps.log.warn('store recovered', { failingMs: now - since, failures });
    this.deps.changed(this.current);
  }

  /** Stops probing (engine shutdown). */
  stop(): void {
    this.stopped = true;
    this.deps.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.stopped || this.probing || this.deps.probeMs <= 0 || this.health.ok) return;
    this.deps.clock.clearTimeout(this.timer);
    this.timer = this.deps.clock.setTimeout(() => {
      this.timer = undefined;
      void this.probe();
    }, this.deps.probeMs);
  }

  private async probe(): Promise<void> {
    if (this.stopped || this.health.ok) return;
    this.probing = true;
    const { store } = this.deps;
    try {
      await (capable(store, 'ping') ? store.ping() : store.devices(PROBE_USER));
      this.probing = false;
      this.succeeded();
    } catch (e) {
      this.probing = false;
      this.failed(e);
      this.schedule();
    }
  }
}
