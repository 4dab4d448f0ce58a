// Real Chromium for the browser tests: Debian's `chromium` (installed by .ci/run) driven by
// playwright-core, and a `postbox serve` with the web example on its static port. Without
// Chromium the suites skip saying why, and fail in CI (see describeWithServices).
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { chromium, type Browser } from 'playwright-core';
import { startServe, type ServeHandle, type ServeOptions } from '../../src/cli/serve.js';

/** Where Chromium is looked for: POSTBOX_CHROMIUM, then Debian's and Ubuntu's paths. */
const CANDIDATES = [process.env.POSTBOX_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'];

/** The Chromium executable, or undefined. */
export const chromiumPath: string | undefined = CANDIDATES.find((p): p is string => !!p && existsSync(p));

/** Why the browser suites cannot run here, or undefined when they can. */
export const chromiumMissing: string | undefined = chromiumPath
  ? undefined
  : `no Chromium at ${CANDIDATES.filter(Boolean).join(' or ')} (apt-get install -y chromium, or set POSTBOX_CHROMIUM)`;

/** Screenshots and other files a run keeps for a human to look at. */
export const ARTIFACTS = join(process.cwd(), 'test-results', 'browser');

/** Headless Chromium; `--no-sandbox` because CI runs as root in a container. */
export function launch(): Promise<Browser> {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({ executablePath: chromiumPath!, headless: true, args: ['--no-sandbox'] });
}

/** Bundles a browser entry (from the built package, as an app would) into `outdir`. */
export async function bundle(
  entry: string,
  outdir: string,
  alias: Record<string, string> = {},
): Promise<void> {
  await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    outdir,
    alias,
    logLevel: 'warning',
  });
}

/** A `postbox serve` with the web example (built into a temp dir) on its static port. */
export interface WebServer {
  handle: ServeHandle;
  /** The page's base URL, `http://127.0.0.1:PORT/`. */
  base: string;
  /** Connections the server has open now. */
  connections(): number;
  close(): Promise<void>;
}

/** Starts a server serving examples/web, with `extra` static files bundled beside it. */
export async function webServer(extra: Record<string, string> = {}, options: Partial<ServeOptions> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'postbox-web-'));
  copyFileSync('examples/web/index.html', join(dir, 'index.html'));
  await bundle('examples/web/app.ts', join(dir, 'dist'));
  for (const [name, entry] of Object.entries(extra)) {
    await bundle(entry, join(dir, name), {
      'node:assert/strict': join(process.cwd(), 'test/browser/assert-shim.ts'),
    });
  }
  const handle = await startServe({
    port: 0,
    host: '127.0.0.1',
    data: join(dir, 'server.sqlite'),
    path: '/postbox',
    insecureDevAuth: true,
    retentionDays: 1,
    maxBodyBytes: 65536,
    maxFrameBytes: 262144,
    maxConnectionsPerAddress: 256,
    // Short, so a browser whose network went away notices within a few seconds.
    heartbeatMs: 2000,
    linking: 'open',
    maxGroupMembers: 16,
    presence: 'everyone',
    logLevel: 'silent',
    traceDays: 0,
    static: dir,
    ...options,
  });
  const port = new URL(handle.url).port;
  const server: WebServer = {
    handle,
    base: `http://127.0.0.1:${port}/`,
    connections: () => handle.engine.connectionCount,
    async close() {
      await handle.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
