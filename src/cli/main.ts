#!/usr/bin/env node
// The `postbox` command: `serve` runs a server, `token` signs a client token, `chat` runs the
// terminal chat client (examples/chat.ts).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_TOKEN_TTL_MS, signToken } from '../server/auth.js';
import { LOG_LEVELS, type LogLevel } from './log.js';
import { startServe, type ServeOptions } from './serve.js';
import { traceCommand } from './trace.js';

const HELP = `postbox — embeddable store-and-forward messaging

Usage:
  postbox serve [options]        run a server (WebSocket + SQLite)
  postbox --version              print the version
  postbox token --user U --device D [--secret S] [--ttl-hours H | --no-expiry]
                                 print a signed client token, valid for H hours (default 24)
  postbox trace ID [--data FILE | --store URL] [--json]
                                 what the server recorded about message ID (docs/operations.md)
  postbox chat --server URL --as USER --to PEER [--token T | --secret S | --insecure-dev-auth]
                                 terminal chat client (see examples/chat.ts)

serve options (flag, environment variable, default):
  --port N                  POSTBOX_PORT                  8080
  --host H                  POSTBOX_HOST                  127.0.0.1
  --data FILE               POSTBOX_DATA                  ./postbox.sqlite
  --store URL               POSTBOX_STORE                 (the --data SQLite file) postgres://…[?schema=S][&prepared=off]: keep everything in PostgreSQL instead
                                                          (&connect_timeout=SECONDS, 5, &query_timeout=MS, 10000: how long a vanished database may hold a call)
  --cluster URL             POSTBOX_CLUSTER               (one node) redis://…[?prefix=P]: one gateway of many over Redis (needs --store postgres://)
  --node-id ID              POSTBOX_NODE_ID               HOST-PID (this gateway's name in the cluster)
  --cluster-ttl-ms N        POSTBOX_CLUSTER_TTL_MS        15000 (a dead gateway stops counting after this)
  --path P                  POSTBOX_PATH                  /postbox
  --secret S                POSTBOX_SECRET                (required, ≥ 16 bytes; clients present tokens from 'postbox token')
  --insecure-dev-auth       POSTBOX_INSECURE_DEV_AUTH=1   accept "user/device" as credentials: ANYONE CAN BE ANYONE
  --retention-days N        POSTBOX_RETENTION_DAYS        30
  --max-body-bytes N        POSTBOX_MAX_BODY_BYTES        65536
  --max-frame-bytes N       POSTBOX_MAX_FRAME_BYTES       262144
  --max-conns-per-address N POSTBOX_MAX_CONNS_PER_ADDRESS 256 (open sockets and WebSockets per client address)
  --max-sockets N           POSTBOX_MAX_SOCKETS           open-files limit less a tenth (open sockets in all; over it a socket is reset)
  --headers-timeout-ms N    POSTBOX_HEADERS_TIMEOUT_MS    10000 (a new socket must finish its request headers within this)
  --max-queued-bytes N      POSTBOX_MAX_QUEUED_BYTES      134217728 (send queues of all connections; over it the slowest readers get 4008)
  --trust-proxy LIST        POSTBOX_TRUST_PROXY           (none) proxies whose header names the client: addresses, CIDRs, loopback, private
  --trust-proxy-header H    POSTBOX_TRUST_PROXY_HEADER    x-forwarded-for
  --metrics-port N          POSTBOX_METRICS_PORT          (none) serve /metrics, /healthz, /readyz on a listener of their own
  --metrics-host H          POSTBOX_METRICS_HOST          127.0.0.1
  --metrics-token T         POSTBOX_METRICS_TOKEN         (none) serve /metrics on the client port to "Authorization: Bearer T"
  --heartbeat-ms N          POSTBOX_HEARTBEAT_MS          25000
  --linking MODE            POSTBOX_LINKING               approval (approval|open: may a user's new device join without an existing device's approval)
  --max-group-members N     POSTBOX_MAX_GROUP_MEMBERS     1024 (at most 1024)
  --group-consent RULE      POSTBOX_GROUP_CONSENT         related (related|invite|open: who joins a group at once; the others get an invite)
  --presence WHO            POSTBOX_PRESENCE              contacts (contacts|everyone|nobody: who may see whose online/last seen)
  --push-webhook URL        POSTBOX_PUSH_WEBHOOK          (none) POST content-free wake-ups for offline devices to URL (docs/push.md)
  --log-level L             POSTBOX_LOG_LEVEL             info (debug|info|warn|error|silent; debug also logs every trace event)
  --trace-days N            POSTBOX_TRACE_DAYS            7 (how long the delivery trace keeps its events; 0 turns it off)
  --media-dir DIR           POSTBOX_MEDIA_DIR             DATA-media (media blobs at http://HOST:PORT/media; with --store, off unless set; 'off' turns it off)
  --max-upload-mb N         POSTBOX_MAX_UPLOAD_MB         2048 (largest media file)
  --static DIR              POSTBOX_STATIC                (none) also serve DIR's files over HTTP, e.g. the web chat example (local play only)
`;

function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

function num(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0)
    throw new Error(`--${flag} must be a non-negative number, got ${JSON.stringify(value)}`);
  return n;
}

function oneOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value))
    throw new Error(`--${flag} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      data: { type: 'string' },
      store: { type: 'string' },
      cluster: { type: 'string' },
      'node-id': { type: 'string' },
      'cluster-ttl-ms': { type: 'string' },
      path: { type: 'string' },
      secret: { type: 'string' },
      'insecure-dev-auth': { type: 'boolean' },
      'retention-days': { type: 'string' },
      'max-body-bytes': { type: 'string' },
      'max-frame-bytes': { type: 'string' },
      'max-conns-per-address': { type: 'string' },
      'max-sockets': { type: 'string' },
      'headers-timeout-ms': { type: 'string' },
      'max-queued-bytes': { type: 'string' },
      'trust-proxy': { type: 'string' },
      'trust-proxy-header': { type: 'string' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      'metrics-token': { type: 'string' },
      'heartbeat-ms': { type: 'string' },
      linking: { type: 'string' },
      'max-group-members': { type: 'string' },
      'group-consent': { type: 'string' },
      presence: { type: 'string' },
      'push-webhook': { type: 'string' },
      'log-level': { type: 'string' },
      'trace-days': { type: 'string' },
      'media-dir': { type: 'string' },
      'max-upload-mb': { type: 'string' },
      static: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const logLevel = (values['log-level'] ?? env('POSTBOX_LOG_LEVEL') ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new Error(`--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  const options: ServeOptions = {
    port: num('port', values.port ?? env('POSTBOX_PORT'), 8080),
    host: values.host ?? env('POSTBOX_HOST') ?? '127.0.0.1',
    data: values.data ?? env('POSTBOX_DATA') ?? './postbox.sqlite',
    path: values.path ?? env('POSTBOX_PATH') ?? '/postbox',
    insecureDevAuth: values['insecure-dev-auth'] ?? env('POSTBOX_INSECURE_DEV_AUTH') === '1',
    retentionDays: num('retention-days', values['retention-days'] ?? env('POSTBOX_RETENTION_DAYS'), 30),
    maxBodyBytes: num('max-body-bytes', values['max-body-bytes'] ?? env('POSTBOX_MAX_BODY_BYTES'), 65536),
    maxFrameBytes: num(
      'max-frame-bytes',
      values['max-frame-bytes'] ?? env('POSTBOX_MAX_FRAME_BYTES'),
      262144,
    ),
    maxConnectionsPerAddress: num(
      'max-conns-per-address',
      values['max-conns-per-address'] ?? env('POSTBOX_MAX_CONNS_PER_ADDRESS'),
      256,
    ),
    heartbeatMs: num('heartbeat-ms', values['heartbeat-ms'] ?? env('POSTBOX_HEARTBEAT_MS'), 25000),
    linking: oneOf('linking', values.linking ?? env('POSTBOX_LINKING') ?? 'approval', ['approval', 'open']),
    maxGroupMembers: num(
      'max-group-members',
      values['max-group-members'] ?? env('POSTBOX_MAX_GROUP_MEMBERS'),
      1024,
    ),
    groupConsent: oneOf<'related' | 'invite' | 'open'>(
      'group-consent',
      values['group-consent'] ?? env('POSTBOX_GROUP_CONSENT') ?? 'related',
      ['related', 'invite', 'open'],
    ),
    presence: oneOf('presence', values.presence ?? env('POSTBOX_PRESENCE') ?? 'contacts', [
      'contacts',
      'everyone',
      'nobody',
    ]),
    logLevel,
    traceDays: num('trace-days', values['trace-days'] ?? env('POSTBOX_TRACE_DAYS'), 7),
    maxUploadMb: num('max-upload-mb', values['max-upload-mb'] ?? env('POSTBOX_MAX_UPLOAD_MB'), 2048),
  };
  const mediaDir = values['media-dir'] ?? env('POSTBOX_MEDIA_DIR');
  if (mediaDir !== undefined) options.mediaDir = mediaDir === 'off' ? false : mediaDir;
  const storeUrl = values.store ?? env('POSTBOX_STORE');
  if (storeUrl !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(storeUrl)) {
      process.stderr.write(`postbox: --store must be a postgres:// URL (got ${JSON.stringify(storeUrl)})\n`);
      process.exit(2);
    }
    options.store = storeUrl;
  }
  const clusterUrl = values.cluster ?? env('POSTBOX_CLUSTER');
  if (clusterUrl !== undefined) {
    if (!/^rediss?:\/\//.test(clusterUrl)) {
      process.stderr.write(`postbox: --cluster must be a redis:// URL (got ${JSON.stringify(clusterUrl)})\n`);
      process.exit(2);
    }
    if (!options.store) {
      process.stderr.write(
        'postbox: --cluster needs --store postgres://…: every gateway must share one store (a SQLite file is one node)\n',
      );
      process.exit(2);
    }
    options.cluster = clusterUrl;
    const nodeId = values['node-id'] ?? env('POSTBOX_NODE_ID');
    if (nodeId !== undefined) options.nodeId = nodeId;
    options.clusterTtlMs = num(
      'cluster-ttl-ms',
      values['cluster-ttl-ms'] ?? env('POSTBOX_CLUSTER_TTL_MS'),
      15000,
    );
  }
  const maxSockets = values['max-sockets'] ?? env('POSTBOX_MAX_SOCKETS');
  if (maxSockets !== undefined) options.maxSockets = num('max-sockets', maxSockets, 0);
  options.headersTimeoutMs = num(
    'headers-timeout-ms',
    values['headers-timeout-ms'] ?? env('POSTBOX_HEADERS_TIMEOUT_MS'),
    10_000,
  );
  const maxQueued = values['max-queued-bytes'] ?? env('POSTBOX_MAX_QUEUED_BYTES');
  if (maxQueued !== undefined) options.maxQueuedBytes = num('max-queued-bytes', maxQueued, 0);
  const trustProxy = values['trust-proxy'] ?? env('POSTBOX_TRUST_PROXY');
  if (trustProxy !== undefined) options.trustProxy = trustProxy.split(',').map((s) => s.trim());
  const trustHeader = values['trust-proxy-header'] ?? env('POSTBOX_TRUST_PROXY_HEADER');
  if (trustHeader !== undefined) options.trustProxyHeader = trustHeader;
  const metricsPort = values['metrics-port'] ?? env('POSTBOX_METRICS_PORT');
  if (metricsPort !== undefined) options.metricsPort = num('metrics-port', metricsPort, 0);
  const metricsHost = values['metrics-host'] ?? env('POSTBOX_METRICS_HOST');
  if (metricsHost !== undefined) options.metricsHost = metricsHost;
  const metricsToken = values['metrics-token'] ?? env('POSTBOX_METRICS_TOKEN');
  if (metricsToken !== undefined) options.metricsToken = metricsToken;
  const staticDir = values.static ?? env('POSTBOX_STATIC');
  if (staticDir !== undefined) options.static = staticDir;
  const pushWebhook = values['push-webhook'] ?? env('POSTBOX_PUSH_WEBHOOK');
  if (pushWebhook !== undefined) options.pushWebhook = pushWebhook;
  const secret = values.secret ?? env('POSTBOX_SECRET');
  if (secret !== undefined) options.secret = secret;
  if (!options.secret && options.insecureDevAuth) {
    process.stderr.write(
      '\n  !!! --insecure-dev-auth: credentials are "user/device" strings and ANYONE CAN BE ANYONE. !!!\n' +
        '  !!! For local play only. Use --secret and signed tokens (postbox token) anywhere else. !!!\n\n',
    );
  }
  const handle = await startServe(options);
  // One parseable line on stdout: tests and scripts wait for it.
  const where = options.store ? options.store.replace(/\/\/[^@/]*@/, '//…@') : options.data;
  const node = handle.nodeId ? `, node ${handle.nodeId} of the cluster` : '';
  process.stdout.write(`postbox listening on ${handle.url} (data: ${where}${node})\n`);
  if (handle.metricsUrl) process.stdout.write(`postbox metrics on ${handle.metricsUrl}\n`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(
      `postbox: ${signal}, shutting down (finishing commits, closing connections with 1001)\n`,
    );
    handle.close().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`postbox: shutdown failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function token(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    options: {
      user: { type: 'string' },
      device: { type: 'string' },
      secret: { type: 'string' },
      'ttl-hours': { type: 'string' },
      'no-expiry': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const secret = values.secret ?? env('POSTBOX_SECRET');
  if (!values.user || !values.device || !secret)
    throw new Error('postbox token needs --user, --device and --secret (or POSTBOX_SECRET)');
  if (values['no-expiry'] && values['ttl-hours'] !== undefined)
    throw new Error('pass --ttl-hours or --no-expiry, not both');
  const hours = num('ttl-hours', values['ttl-hours'], DEFAULT_TOKEN_TTL_MS / 3600_000);
  if (!(hours > 0)) throw new Error('--ttl-hours must be more than 0');
  if (values['no-expiry']) {
    process.stderr.write(
      'postbox: --no-expiry: this token NEVER EXPIRES. Only your authenticate hook can stop it (docs/operations.md).\n',
    );
  }
  const expiresAt = values['no-expiry'] ? null : Date.now() + hours * 3600_000;
  process.stdout.write(`${signToken(secret, { user: values.user, device: values.device, expiresAt })}\n`);
}

const [command, ...rest] = process.argv.slice(2);
try {
  if (command === 'serve') await serve(rest);
  else if (command === 'token') token(rest);
  else if (command === 'trace') await traceCommand(rest, HELP);
  else if (command === '--version' || command === '-v' || command === 'version') {
    // dist/cli/main.js → the package's own package.json, two levels up (also from src/ under tsx).
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    process.stdout.write(`postbox ${pkg.version}\n`);
  } else if (command === 'chat') {
    // The chat client is an example app built on the public API; it ships compiled beside the CLI.
    const chat = './../examples/chat.js';
    await import(chat);
  } else {
    process.stdout.write(HELP);
    if (command !== undefined && command !== 'help' && command !== '--help' && command !== '-h')
      process.exitCode = 2;
  }
} catch (e) {
  process.stderr.write(`postbox: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(2);
}
