// The least a browser bundle on postbox's mandated core dependencies can weigh: msgpackr's
// encoder and decoder (`msgpackr/pack`, `msgpackr/unpack`) and one small `zod/mini` object
// schema, nothing of postbox, bundled as test/browser-build.test.ts bundles the client core
// (esbuild, browser, ESM, minified, then gzip at zlib's default level), beside socket.io-client
// measured the same way (`export * from 'socket.io-client'`). Issue 18 asked for a client core
// smaller than socket.io-client; this is the floor under any such core.
//   node bench/tools/bundle-floor.mjs
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const entries = {
  'msgpackr (pack + unpack)': `
    import { Packr } from 'msgpackr/pack';
    import { Unpackr } from 'msgpackr/unpack';
    export const p = new Packr({ useRecords: false });
    export const u = new Unpackr({ useRecords: false });`,
  'zod/mini (one object schema)': `
    import * as z from 'zod/mini';
    export const frame = z.object({ t: z.literal('msg'), id: z.string(), o: z.optional(z.number()) });`,
  'both together': `
    import { Packr } from 'msgpackr/pack';
    import { Unpackr } from 'msgpackr/unpack';
    import * as z from 'zod/mini';
    export const p = new Packr({ useRecords: false });
    export const u = new Unpackr({ useRecords: false });
    export const frame = z.object({ t: z.literal('msg'), id: z.string(), o: z.optional(z.number()) });`,
  'socket.io-client': `export * from 'socket.io-client';`,
};

for (const [name, contents] of Object.entries(entries)) {
  const result = await build({
    stdin: { contents, resolveDir: process.cwd(), loader: 'js' },
    bundle: true,
    minify: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    logLevel: 'silent',
  });
  const code = result.outputFiles[0].contents;
  const kib = (n) => (n / 1024).toFixed(1);
  console.log(
    `${name.padEnd(30)} ${kib(code.byteLength).padStart(6)} KiB min ${kib(gzipSync(code).byteLength).padStart(6)} KiB gzip`,
  );
}
