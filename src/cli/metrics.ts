/**
 * Prometheus metrics for `postbox serve`, on `prom-client` (an optional peer: without it the
 * server runs and `/metrics` says why it is empty).
 * @packageDocumentation
 */
import type { ErrorCode } from '../protocol/index.js';
import type { PostboxServer } from '../server/engine.js';
import type { ServerMetrics } from '../server/metrics.js';
import type { SocketGuard, SocketRefusal } from '../transport/socket-guard.js';

/** What {@link PrometheusMetrics.watch} reads at scrape time: counters only, never the store. */
export interface WatchedParts {
  /** The transport's outbound queue account. */
  transport?: { readonly queuedBytes: number; readonly shedCount: number };
  /** The socket guard of the client port. */
  guard?: SocketGuard;
}

/** The metrics hooks for the engine and the text `/metrics` serves. */
export interface PrometheusMetrics {
  hooks: ServerMetrics;
  /**
   * Call once the engine exists: gauges that read counters the engine and transport keep up to
   * date (O(1) at scrape time; nothing reads the store).
   */
  watch(engine: PostboxServer, parts?: WatchedParts): void;
  /** The socket guard's `onRefused` hook. */
  socketRefused(reason: SocketRefusal, address: string): void;
  contentType: string;
  render(): Promise<string>;
}

/**
 * Builds the metrics on prom-client, or undefined when it is not installed. Names: `postbox_`
 * `connections` (gauge), `sends_total{kind,result}`, `commit_seconds` (histogram of group-commit
 * latency), `commit_items` (histogram of batch sizes), `deliveries_total`, `acks_total`,
 * `doorbells_total`, `push_total{result}`, `errors_total{code}`, `online_devices` (gauge),
 * `store_up` (gauge: 1 while the store answers, see `PostboxServer.storeHealth`),
 * `sockets_open` (gauge), `sockets_refused_total{reason}` (global, address, timeout),
 * `outbound_queued_bytes` (gauge), `slow_readers_shed_total`, `client_log_dropped_total`, plus
 * the process defaults (CPU, memory, event loop lag) but not `nodejs_version_info`.
 */
export async function prometheusMetrics(): Promise<PrometheusMetrics | undefined> {
  let prom: typeof import('prom-client');
  try {
    prom = await import('prom-client');
  } catch {
    return undefined;
  }
  const registry = new prom.Registry();
  // prom-client's names already start with `process_` / `nodejs_`: prefix only with `postbox_`.
  prom.collectDefaultMetrics({ register: registry, prefix: 'postbox_' });
  // The exact Node version tells an attacker which CVEs to try: not published.
  registry.removeSingleMetric('postbox_nodejs_version_info');
  const m = {
    connections: new prom.Gauge({
      name: 'postbox_connections',
      help: 'Open connections',
      registers: [registry],
    }),
    sends: new prom.Counter({
      name: 'postbox_sends_total',
      help: 'Appended items (messages, receipts, group changes) by kind and result',
      labelNames: ['kind', 'result'] as const,
      registers: [registry],
    }),
    commit: new prom.Histogram({
      name: 'postbox_commit_seconds',
      help: 'Store append (group commit) latency',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    items: new prom.Histogram({
      name: 'postbox_commit_items',
      help: 'Items per group commit',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
      registers: [registry],
    }),
    deliveries: new prom.Counter({
      name: 'postbox_deliveries_total',
      help: 'Inbox entries pushed to devices',
      registers: [registry],
    }),
    acks: new prom.Counter({
      name: 'postbox_acks_total',
      help: 'Inbox entries acknowledged by devices',
      registers: [registry],
    }),
    doorbells: new prom.Counter({
      name: 'postbox_doorbells_total',
      help: 'Devices told of new inbox entries',
      registers: [registry],
    }),
    push: new prom.Counter({
      name: 'postbox_push_total',
      help: 'Push wake-ups attempted, by result',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    errors: new prom.Counter({
      name: 'postbox_errors_total',
      help: 'Error frames sent to clients, by code',
      labelNames: ['code'] as const,
      registers: [registry],
    }),
    refused: new prom.Counter({
      name: 'postbox_sockets_refused_total',
      help: 'Sockets reset by the socket guard: over the global cap, over their address cap, or too slow to send headers',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
  };
  const hooks: ServerMetrics = {
    connection: (d) => m.connections.inc(d),
    commit: (ms, items, ok) => {
      m.commit.observe({ result: ok ? 'ok' : 'failed' }, ms / 1000);
      m.items.observe(items);
    },
    sent: (kind, refused?: ErrorCode) => m.sends.inc({ kind, result: refused ?? 'ok' }),
    delivered: (n) => m.deliveries.inc(n),
    acked: (n) => m.acks.inc(n),
    doorbell: (n) => m.doorbells.inc(n),
    push: (ok) => m.push.inc({ result: ok ? 'ok' : 'failed' }),
    error: (code) => m.errors.inc({ code }),
  };
  return {
    hooks,
    socketRefused: (reason) => m.refused.inc({ reason }),
    watch(engine, parts = {}) {
      // Every gauge reads a number kept up to date elsewhere: a scrape costs no store read and no
      // walk over sessions, whatever their number.
      const gauge = (name: string, help: string, read: () => number) =>
        new prom.Gauge({
          name,
          help,
          registers: [registry],
          collect() {
            this.set(read());
          },
        });
      let online = 0;
      engine.on('online', () => online++);
      engine.on('offline', () => online--);
      gauge('postbox_online_devices', 'Devices with an open session on this node', () => online);
      const { transport, guard } = parts;
      if (guard)
        gauge('postbox_sockets_open', 'Open sockets on the client port (any kind)', () => guard.open);
      if (transport) {
        gauge(
          'postbox_outbound_queued_bytes',
          'Bytes queued for sending across all connections',
          () => transport.queuedBytes,
        );
        new prom.Counter({
          name: 'postbox_slow_readers_shed_total',
          help: 'Connections closed (4008) because the send queues were over their bound and they had the most queued',
          registers: [registry],
          collect() {
            this.reset();
            this.inc(transport.shedCount);
          },
        });
      }
      new prom.Counter({
        name: 'postbox_client_log_dropped_total',
        help: 'Client-caused warning lines not written (over the per-device or total rate)',
        registers: [registry],
        collect() {
          this.reset();
          this.inc(engine.clientLogDropped);
        },
      });
      new prom.Gauge({
        name: 'postbox_store_up',
        help: 'Whether the store answers (0 from a failed store call until a commit or probe succeeds)',
        registers: [registry],
        collect() {
          this.set(engine.storeHealth().ok ? 1 : 0);
        },
      });
    },
    contentType: registry.contentType,
    render: () => registry.metrics(),
  };
}
