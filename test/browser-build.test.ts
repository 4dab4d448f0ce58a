import { build, type Plugin } from 'esbuild';
import { builtinModules } from 'node:module';
import { describe, expect, it } from 'vitest';
import { browserBundleSize } from '../bench/lib/browser-bundle.mjs';

// The client core must run in browsers: bundling it for the browser platform must not pull in
// any Node built-in.
const nodeBuiltins: Plugin = {
  name: 'forbid-node-builtins',
  setup(b) {
    const names = new Set(builtinModules);
    b.onResolve({ filter: /.*/ }, (args) => {
      const bare = args.path.replace(/^node:/, '').split('/')[0]!;
      if (args.path.startsWith('node:') || names.has(bare)) {
        return { errors: [{ text: `Node built-in "${args.path}" imported by ${args.importer}` }] };
      }
      return undefined;
    });
  },
};

describe('the client core is browser-safe', () => {
  for (const entry of [
    'src/client/index.ts',
    'src/protocol/index.ts',
    'src/transport/memory.ts',
    'src/client/stores/memory.ts',
    'src/client/stores/indexeddb.ts',
    'src/client/tabs/index.ts',
    'src/transport/websocket-client.ts',
    'src/crypto/index.ts', // not src/crypto/libsignal.ts: Node/Electron only
  ]) {
    it(`${entry} bundles for the browser with no node: import`, async () => {
      const result = await build({
        entryPoints: [entry],
        bundle: true,
        platform: 'browser',
        format: 'esm',
        write: false,
        logLevel: 'silent',
        plugins: [nodeBuiltins],
      });
      expect(result.errors).toEqual([]);
      const code = result.outputFiles[0]!.text;
      expect(code).not.toMatch(/from\s*["']node:/);
      expect(code.length).toBeGreaterThan(1000);
    });
  }
});

/** The ceiling for the client core in a browser app: minified and gzipped, as a CDN serves it. */
const CLIENT_CORE_GZIP_CEILING = 60 * 1024;

describe('the browser client is lean', () => {
  it(`the client core (engine, protocol, memory store, WebSocket transport) is at most ${CLIENT_CORE_GZIP_CEILING / 1024} KiB minified + gzip`, async () => {
    const {
      code,
      gzip: gzipped,
      metafile,
    } = await browserBundleSize(
      [
        "export * from './src/client/index.ts';",
        "export * from './src/client/stores/memory.ts';",
        "export * from './src/transport/websocket-client.ts';",
      ].join('\n'),
      { loader: 'ts' },
    );
    // Validation comes from zod/mini: the full `zod` entry would add ~400 KiB minified.
    const zodBytes = Object.entries(metafile.outputs)[0]![1].inputs;
    const fromZod = Object.entries(zodBytes)
      .filter(([file]) => file.includes('node_modules/zod/'))
      .reduce((n, [, v]) => n + v.bytesInOutput, 0);
    console.log(
      `client core: ${(code.byteLength / 1024).toFixed(1)} KiB min, ${(gzipped / 1024).toFixed(1)} KiB gzip (zod ${(fromZod / 1024).toFixed(1)} KiB min)`,
    );
    expect(fromZod).toBeLessThan(64 * 1024);
    expect(gzipped).toBeLessThanOrEqual(CLIENT_CORE_GZIP_CEILING);
  });
});

describe('libsignal in a browser bundle', () => {
  it('resolves to the browser build, whose libsignalCrypto() throws misconfigured at construction', async () => {
    const result = await build({
      stdin: {
        contents: `import { libsignalCrypto } from 'postbox/crypto/libsignal';
          let out; try { libsignalCrypto(); out = 'constructed'; } catch (e) { out = e.code + ': ' + e.message; }
          globalThis.outcome = out;`,
        resolveDir: process.cwd(),
      },
      bundle: true,
      platform: 'browser',
      format: 'iife',
      write: false,
      logLevel: 'silent',
      plugins: [nodeBuiltins],
    });
    const code = result.outputFiles[0]!.text;
    expect(code).not.toContain('ProtocolAddress'); // nothing of libsignal itself
    const g = globalThis as { outcome?: string };
    new Function(code)();
    expect(g.outcome).toMatch(/^misconfigured: .*no browser build.*docs\/encryption\.md/);
    delete g.outcome;
  });
});
