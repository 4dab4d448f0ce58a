import type { Metafile } from 'esbuild';

/** A browser bundle's size, measured as every size figure of postbox's is (see browser-bundle.mjs). */
export function browserBundleSize(
  contents: string,
  options?: { loader?: 'js' | 'ts'; resolveDir?: string },
): Promise<{ code: Uint8Array; bytes: number; gzip: number; metafile: Metafile }>;
