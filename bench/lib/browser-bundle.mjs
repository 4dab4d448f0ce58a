// How postbox measures a browser bundle's size, in one place: the size test
// (test/browser-build.test.ts) and the bench tools use it, so the client core and the peers it is
// compared with are bundled alike. esbuild, browser platform, ESM, minified; gzip at zlib's default
// level, as a CDN serves it.
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

/**
 * Bundles `contents` (a module's source, resolved from `resolveDir`) for the browser, minified;
 * resolves with the code, its gzipped size and esbuild's metafile.
 */
export async function browserBundleSize(contents, { loader = 'js', resolveDir = process.cwd() } = {}) {
  const result = await build({
    stdin: { contents, resolveDir, loader },
    bundle: true,
    minify: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    logLevel: 'silent',
    metafile: true,
  });
  const code = result.outputFiles[0].contents;
  return { code, bytes: code.byteLength, gzip: gzipSync(code).byteLength, metafile: result.metafile };
}
