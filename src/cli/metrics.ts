/**
 * Prometheus metrics for `postbox serve`, on `prom-client` (an optional peer: without it the
 * server runs and `/metrics` says why it is empty).
 * @packageDocumentation
 */
import type { ErrorCode } from '../protocol/index.js';
import type { PostboxServer } from '../server/engine.js';
import type { ServerMetrics } from '../server/metrics.js';

/** The metrics hooks for the engine and the text `/metrics` serves. */
export interface PrometheusMetrics {
  hooks: ServerMetrics;
  /** Call once the engine exists: gauges that read its state at scrape time. */
  watch(engine: PostboxServer): void;
  contentType: string;
  render(): Promise<string>;
}

/**
 * Builds the metrics on prom-client, or undefined when it is not installed. Names: `postbox_`
 * `connections` (gauge), `sends_total{kind,result}`, `commit_seconds` (histogram of group-commit
 * latency), `commit_items` (histogram of batch sizes), `deliveries_total`, `acks_total`,
 * `doorbells_total`, `push_total{result}`, `errors_total{code}`, `online_devices` (gauge),
 * `store_up` (gauge: 1 while the store answers, see `PostboxServer.storeHealth`),
 * `inbox_entries` (gauge: the inbox depth, when the store can count it), plus
 * the process defaults (CPU, memory, event loop lag).
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
    watch(engine) {
      const store = engine.store;
      if (store.inboxSize) {
        const size = store.inboxSize.bind(store);
        new prom.Gauge({
          name: 'postbox_inbox_entries',
          help: 'Entries waiting in all inboxes (not yet acked), as the store counts them',
          registers: [registry],
          async collect() {
            // A failing store leaves the last value: a scrape must not fail with it, nor wait
            // out the store's timeouts while the engine already knows it is away.
            if (!engine.storeHealth().ok) return;
            this.set(await size().catch(() => NaN));
          },
        });
      }
      new prom.Gauge({
        name: 'postbox_store_up',
        help: 'Whether the store answers (0 from a failed store call until a commit or probe succeeds)',
        registers: [registry],
        collect() {
          this.set(engine.storeHealth().ok ? 1 : 0);
        },
      });
      new prom.Gauge({
        name: 'postbox_online_devices',
        help: 'Devices with an open session on this node',
        registers: [registry],
        collect() {
          this.set(engine.onlineDevices().length);
        },
      });
    },
    contentType: registry.contentType,
    render: () => registry.metrics(),
  };
}
