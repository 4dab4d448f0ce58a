#!/usr/bin/env node
// Bundles the web chat example (examples/web/app.ts) for browsers with esbuild, from the built
// package (run `npm run build` first): `node scripts/build-web.mjs [OUTDIR]`, default
// examples/web/dist. The `browser` export condition applies, as in any browser bundler.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outdir = process.argv[2] ?? `${root}/examples/web/dist`;
await build({
  entryPoints: [`${root}/examples/web/app.ts`],
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outdir,
  logLevel: 'warning',
});
process.stdout.write(`built ${outdir}/app.js\n`);
