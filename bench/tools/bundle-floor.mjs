// The least a browser bundle on postbox's mandated core dependencies can weigh: msgpackr's
// encoder and decoder (`msgpackr/pack`, `msgpackr/unpack`) and one small `zod/mini` object
// schema, nothing of postbox, measured as test/browser-build.test.ts measures the client core
// (bench/lib/browser-bundle.mjs), beside socket.io-client measured the same way. Issue 18 asked
// for a client core smaller than socket.io-client; this is the floor under any such core.
//   node bench/tools/bundle-floor.mjs
import { browserBundleSize } from '../lib/browser-bundle.mjs';

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

const kib = (n) => (n / 1024).toFixed(1);
for (const [name, contents] of Object.entries(entries)) {
  const { bytes, gzip } = await browserBundleSize(contents);
  console.log(`${name.padEnd(30)} ${kib(bytes).padStart(6)} KiB min ${kib(gzip).padStart(6)} KiB gzip`);
}
