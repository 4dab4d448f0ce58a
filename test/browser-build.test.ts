import { build, type Plugin } from 'esbuild';
import { builtinModules } from 'node:module';
import { describe, expect, it } from 'vitest';

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
