import { prometheusMetrics } from './metrics.js';
import { webhookPush } from '../server/push/webhook.js';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { hostname } from 'node:os';
import type { ClusterAdapter } from '../server/cluster/types.js';
import { insecureDevAuthenticator, tokenAuthenticator } from '../server/auth.js';
import { createServer, type PostboxServer } from '../server/engine.js';
import { sqliteServerStore } from '../server/stores/sqlite.js';
import type { ServerStore } from '../server/store.js';
import { guardSockets, websocketServerTransport } from '../transport/websocket.js';
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { jsonLogger, type LogLevel } from './log.js';
import { openServeTrace } from './trace.js';
import { openServeMedia, type ServeMedia } from './media.js';
import { staticFiles } from './static.js';
import { parsePostgresStoreUrl } from './store-url.js';

/** Settings of `postbox serve`; each has a flag and an environment variable (see `postbox serve --help`). */
export interface ServeOptions {
  /** TCP port; 0 picks a free one. @default 8080 */
  port: number;
  /** Interface to bind. @default '127.0.0.1' */
  host: string;
  /** SQLite database file (unless `store` is set). @default './postbox.sqlite' */
  data: string;
  /** A `postgres://` connection string: keep everything in PostgreSQL instead of `data`. */
  store?: string;
  /**
   * A `redis://` URL: run as one gateway node of many over this Redis (needs `store`); a `prefix`
   * query parameter namespaces the keys. @default one node, no Redis
   */
  cluster?: string;
  /** This node's name in the cluster. @default `HOST-PID` */
  nodeId?: string;
  /** A dead node's entries stop counting after this. @default 15000 */
  clusterTtlMs?: number;
  /** HTTP path of the WebSocket endpoint. @default '/postbox' */
  path: string;
  /** Secret for signed tokens (at least 16 bytes). Required unless `insecureDevAuth`. */
  secret?: string;
  /** Accept `user/device` strings as credentials. Anyone can be anyone: local play only. */
  insecureDevAuth: boolean;
  /** Days an undelivered message waits before it expires. @default 30 */
  retentionDays: number;
  /** Largest message body in bytes. @default 65536 */
  maxBodyBytes: number;
  /** Largest frame in bytes, enforced before decoding. @default 262144 */
  maxFrameBytes: number;
  /** Open connections (and open sockets) allowed from one address. @default 256 */
  maxConnectionsPerAddress: number;
  /** Open sockets in all. @default the open-files soft limit less a tenth (see `guardSockets`) */
  maxSockets?: number;
  /** A new socket must finish its request headers within this. @default 10000 */
  headersTimeoutMs?: number;
  /** Bytes queued for sending across all connections before the slowest readers are shed. @default 134217728 */
  maxQueuedBytes?: number;
  /**
   * Addresses or CIDR ranges (or `loopback`, `private`) of the reverse proxies whose
   * `trustProxyHeader` names the client. @default none: the TCP peer is the client
   */
  trustProxy?: string[];
  /** @default 'x-forwarded-for' */
  trustProxyHeader?: string;
  /** Serve `/metrics` (and `/healthz`, `/readyz`) on a listener of its own at this port. */
  metricsPort?: number;
  /** Interface of the metrics listener. @default '127.0.0.1' */
  metricsHost?: string;
  /** Serve `/metrics` on the client port to requests with `Authorization: Bearer TOKEN`. */
  metricsToken?: string;
  /** Heartbeat interval advertised to clients. @default 25000 */
  heartbeatMs: number;
  /** Whether a user's new device needs an existing device's approval. @default 'approval' */
  linking: 'approval' | 'open';
  /** Who joins a group at once (see `ServerOptions.groupConsent`). @default 'related' */
  groupConsent?: 'related' | 'invite' | 'open';
  /** Most members of a group (at most 1,024). @default 1024 */
  maxGroupMembers: number;
  /** Who may see whose presence. @default 'contacts' */
  presence: 'contacts' | 'everyone' | 'nobody';
  /** Where to POST wake-ups for devices without a connection (see docs/push.md). @default none */
  pushWebhook?: string;
  /** @default 'info' */
  logLevel: LogLevel;
  /**
   * Days the delivery trace keeps its events (in `DATA-trace` beside the SQLite file, or a table
   * in the PostgreSQL schema); 0 turns the trace off. @default 7
   */
  traceDays?: number;
  /**
   * Folder for media blobs, uploads in progress and the media ledger (docs/media.md). With the
   * SQLite store it defaults to `DATA-media` beside the file; with PostgreSQL, media is off unless
   * this is set. `false` turns media off.
   */
  mediaDir?: string | false;
  /** Largest media upload, in MiB of plaintext. @default 2048 */
  maxUploadMb?: number;
  /**
   * A directory whose files the HTTP port also serves (`/` is its `index.html`), for local play
   * with a web client such as examples/web. Not a production file server. @default none
   */
  static?: string;
}

/** A running `postbox serve`. */
export interface ServeHandle {
  /** The WebSocket URL clients connect to. */
  url: string;
  engine: PostboxServer;
  http: HttpServer;
  store: ServerStore;
  /** This node's id in the cluster, when it runs with one. */
  nodeId: string | undefined;
  /** The media server (`http://HOST:PORT/media`), when media is on. */
  media: ServeMedia | undefined;
  /** Where `/metrics` is served on a listener of its own (`--metrics-port`), if it is. */
  metricsUrl: string | undefined;
  /**
   * Graceful shutdown: stop accepting, finish in-flight commits (their acks go out), close every
   * connection with 1001 "going away" so clients reconnect, then close the store.
   */
  close(): Promise<void>;
}

/**
 * A PostgreSQL store from a `postgres://` URL; `schema` and `prepared=off` query parameters are
 * read by {@link parsePostgresStoreUrl} (and `connect_timeout` in seconds, `query_timeout` in ms
 * bound the waits on a vanished database).
 */
async function openPostgres(url: string, log: ReturnType<typeof jsonLogger>): Promise<ServerStore> {
  const { openPostgresServerStore } = await import('../server/stores/postgres.js');
  return openPostgresServerStore({
    ...parsePostgresStoreUrl(url),
    onError: (e) => log.warn('postgres connection lost', e),
  });
}

/** A started Redis cluster node from a `redis://` URL; a `prefix` query parameter sets the key prefix. */
async function openCluster(url: string, options: ServeOptions, log: ReturnType<typeof jsonLogger>) {
  const { redisCluster } = await import('../server/cluster/redis.js');
  const u = new URL(url);
  const prefix = u.searchParams.get('prefix') ?? undefined;
  u.searchParams.delete('prefix');
  const cluster = redisCluster({
    redis: u.toString(),
    ...(prefix ? { prefix } : {}),
    ttlMs: options.clusterTtlMs ?? 15_000,
    onError: (e) => log.warn('cluster', e),
  });
  await cluster.start(options.nodeId ?? `${hostname()}-${process.pid}`);
  return cluster;
}

/** Starts the server command's stack: HTTP (`/healthz`, `/readyz`), WebSocket, SQLite, engine. */
export async function startServe(options: ServeOptions): Promise<ServeHandle> {
  const log = jsonLogger(options.logLevel);
  let authenticate;
  if (options.secret) authenticate = tokenAuthenticator(options.secret);
  else if (options.insecureDevAuth) authenticate = insecureDevAuthenticator();
  else
    throw new Error(
      'no authentication configured: pass --secret (or POSTBOX_SECRET), or --insecure-dev-auth for local play',
    );

  const store: ServerStore = options.store
    ? await openPostgres(options.store, log)
    : sqliteServerStore({ path: options.data, walFlush: 'background' });
  let cluster: ClusterAdapter | undefined;
  try {
    if (options.cluster) cluster = await openCluster(options.cluster, options, log);
  } catch (e) {
    await store.close();
    const where = options.cluster!.replace(/\/\/[^@/]*@/, '//…@');
    throw new Error(`cannot join the cluster at ${where}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
  const traceDays = options.traceDays ?? 7;
  const trace =
    traceDays > 0
      ? await openServeTrace(options, {
          retentionDays: traceDays,
          onError: (e) => log.warn('trace store connection lost', e),
        })
      : undefined;
  const metrics = await prometheusMetrics();
  const mediaDir = options.mediaDir ?? (options.store ? false : `${options.data}-media`);
  const media: ServeMedia | undefined = mediaDir
    ? openServeMedia(
        {
          dir: mediaDir,
          maxUploadMb: options.maxUploadMb ?? 2048,
          retentionMs: options.retentionDays * 24 * 3600_000,
          ...(options.secret ? { secret: options.secret } : {}),
        },
        store,
        authenticate,
        (e) => log.warn('media', e),
      )
    : undefined;
  let ready = false;
  const files = options.static === undefined ? undefined : staticFiles(options.static);
  const serveMetrics = (res: ServerResponse) => {
    if (!metrics) {
      res
        .writeHead(503, { 'content-type': 'text/plain' })
        .end('metrics need the optional peer prom-client: npm install prom-client\n');
      return;
    }
    metrics.render().then(
      (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
      () => res.writeHead(500).end(),
    );
  };
  const token = options.metricsToken;
  // Shared by both listeners: on the client port /metrics needs the token, else it is not there.
  const handle = (req: IncomingMessage, res: ServerResponse, own: boolean) => {
    // Media (uploads and downloads) is on the client port only.
    if (!own && media?.handler.handle(req, res)) return;
    if (req.url === '/metrics' && (own || (token !== undefined && bearer(req, token)))) {
      serveMetrics(res);
    } else if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (req.url === '/readyz') {
      // Not ready while the store fails: a load balancer sends new connections to nodes that can
      // take sends, and back here once the engine's probe finds the store answering again.
      const health = engine.storeHealth();
      const ok = ready && health.ok;
      res
        .writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' })
        .end(ok ? 'ready\n' : health.ok ? 'not ready\n' : 'not ready: store failing\n');
    } else {
      const notFound = () =>
        res
          .writeHead(404, { 'content-type': 'text/plain' })
          .end('postbox: connect with WebSocket at the configured path\n');
      if (!files || own) return notFound();
      files(req, res).then(
        (served) => served || notFound(),
        () => res.writeHead(500).end(),
      );
    }
  };
  const headersTimeoutMs = options.headersTimeoutMs ?? 10_000;
  // Node checks its own header and request timeouts every `connectionsCheckingInterval`.
  const httpOptions = {
    headersTimeout: headersTimeoutMs,
    requestTimeout: 30_000,
    connectionsCheckingInterval: 1000,
  };
  const http = createHttpServer(httpOptions, (req, res) => handle(req, res, false));
  const trustProxy = options.trustProxy?.length
    ? {
        proxies: options.trustProxy,
        ...(options.trustProxyHeader ? { header: options.trustProxyHeader } : {}),
      }
    : false;
  const guard = guardSockets(http, {
    maxSocketsPerAddress: options.maxConnectionsPerAddress,
    headersTimeoutMs,
    trustProxy,
    ...(options.maxSockets !== undefined ? { maxSockets: options.maxSockets } : {}),
    ...(metrics ? { onRefused: metrics.socketRefused } : {}),
  });
  const transport = websocketServerTransport({
    server: http,
    path: options.path,
    maxFrameBytes: options.maxFrameBytes,
    maxConnectionsPerAddress: options.maxConnectionsPerAddress,
    trustProxy,
    ...(options.maxQueuedBytes !== undefined ? { maxQueuedBytes: options.maxQueuedBytes } : {}),
  });
  const engine = createServer({
    store,
    authenticate,
    logger: log,
    heartbeatMs: options.heartbeatMs,
    linking: options.linking,
    groupConsent: options.groupConsent ?? 'related',
    maxGroupMembers: options.maxGroupMembers,
    presence: options.presence,
    retentionMs: options.retentionDays * 24 * 3600_000,
    maxBodyBytes: options.maxBodyBytes,
    maxFrameBytes: options.maxFrameBytes,
    ...(options.pushWebhook ? { push: webhookPush({ url: options.pushWebhook }) } : {}),
    ...(metrics ? { metrics: metrics.hooks } : {}),
    ...(cluster ? { cluster } : {}),
    trace: trace ?? false,
    traceLog: options.logLevel === 'debug',
  });
  metrics?.watch(engine, { transport, guard });
  await engine.listen(transport);
  await listen(http, options.port, options.host);
  let metricsHttp: HttpServer | undefined;
  let metricsUrl: string | undefined;
  if (options.metricsPort !== undefined) {
    metricsHttp = createHttpServer(httpOptions, (req, res) => handle(req, res, true));
    guardSockets(metricsHttp, { maxSocketsPerAddress: 16, maxSockets: 64, headersTimeoutMs });
    const host = options.metricsHost ?? '127.0.0.1';
    await listen(metricsHttp, options.metricsPort, host);
    const a = metricsHttp.address();
    metricsUrl = `http://${host.includes(':') ? `[${host}]` : host}:${typeof a === 'object' && a ? a.port : options.metricsPort}/metrics`;
  }
  const addr = http.address();
  const port = typeof addr === 'object' && addr ? addr.port : options.port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  const url = `ws://${host}:${port}${options.path}`;
  ready = true;
  let closing: Promise<void> | undefined;
  return {
    url,
    engine,
    http,
    store,
    nodeId: cluster?.nodeId,
    media,
    metricsUrl,
    close() {
      closing ??= (async () => {
        ready = false;
        await engine.close();
        for (const server of metricsHttp ? [http, metricsHttp] : [http]) {
          await new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          });
        }
        await cluster?.stop();
        await trace?.close();
        await media?.close();
        await store.close();
      })();
      return closing;
    },
  };
}

function listen(server: HttpServer, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Whether the request carries `Authorization: Bearer token` (compared in constant time). */
function bearer(req: IncomingMessage, token: string): boolean {
  const got = Buffer.from(req.headers.authorization ?? '');
  const want = Buffer.from(`Bearer ${token}`);
  return got.length === want.length && timingSafeEqual(got, want);
}
