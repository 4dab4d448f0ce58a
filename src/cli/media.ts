// The media server as `postbox serve` runs it: blobs in a folder beside the SQLite file (or the
// --media-dir), the ledger in a SQLite file in that folder, swept once a minute.
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Authenticate } from '../server/engine.js';
import type { ServerStore } from '../server/store.js';
import { storeAudience } from '../server/media/audience.js';
import { fsBlobStore } from '../server/media/fs.js';
import { mediaHttpHandler, type MediaHttpHandler } from '../server/media/http.js';
import { openMediaLedger } from '../server/media/ledger.js';
import { cipherSize } from '../media/format.js';

/** What the media part of `postbox serve` needs. */
export interface ServeMediaOptions {
  /** The folder for blobs, uploads in progress and the ledger. */
  dir: string;
  /** Largest upload in MiB of plaintext. */
  maxUploadMb: number;
  /** Signs download grants; a random one per process when absent (grants then die with it). */
  secret?: string;
  /** How long an attached blob lives (the message retention). */
  retentionMs: number;
}

/** A running media server: its handler and how to stop it. */
export interface ServeMedia {
  handler: MediaHttpHandler;
  close(): Promise<void>;
}

/** Opens the media server of `postbox serve`. */
export function openServeMedia(
  options: ServeMediaOptions,
  store: ServerStore,
  authenticate: Authenticate,
  onError: (e: unknown) => void,
): ServeMedia {
  mkdirSync(options.dir, { recursive: true });
  const blobs = fsBlobStore({ dir: options.dir });
  const ledger = openMediaLedger(join(options.dir, 'ledger.sqlite'));
  const mb = options.maxUploadMb * 1024 * 1024;
  const handler = mediaHttpHandler({
    store: blobs,
    ledger,
    stagingDir: join(options.dir, 'uploads'),
    authenticate,
    audience: storeAudience(store),
    // A grant secret of its own, derived so that a restart keeps issued grants valid.
    secret: options.secret ? `media-grant:${options.secret}` : randomBytes(32),
    limits: {
      // The ciphertext of a file of `mb` bytes, tags and header included, counted in the 64 KiB
      // chunks earlier clients used (today's 256 KiB chunks carry fewer tags and fit).
      maxUploadBytes: cipherSize(mb, 65536),
      retentionMs: options.retentionMs,
    },
    onError,
  });
  const timer = setInterval(() => void handler.sweep().catch(onError), 60_000);
  timer.unref();
  return {
    handler,
    async close() {
      clearInterval(timer);
      ledger.close();
    },
  };
}
