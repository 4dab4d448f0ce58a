// Files in the terminal chat: `/send FILE` encrypts the file on this device and uploads it to the
// server's media endpoint (resuming after a cut or a restart of the program), then the message
// with its reference goes out; a received file is downloaded, verified and saved to the downloads
// folder (it appears there only once every byte checked out).
import { mkdirSync, existsSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import type { PostboxClient } from 'postbox/client';
import type { ClientStore } from 'postbox/client';
import { MediaClient, mediaClient, type MediaRef } from 'postbox/media';
import { fileSource, saveStream } from 'postbox/media/node';

const MIME: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.gif': 'image/gif',
  '.mp4': 'video/mp4',
  '.mp3': 'audio/mpeg',
  '.pdf': 'application/pdf',
  '.txt': 'text/plain',
};

/** What the chat needs of its media side. */
export interface ChatMedia {
  /** `[file NAME, SIZE]` for a media message body, undefined for text. */
  describe(body: Uint8Array): string | undefined;
  /** Saves a received file (ignores other messages); the chat prints what happened. */
  receive(from: string, body: Uint8Array): void;
  /** `/send FILE`. */
  send(peer: string, path: string): void;
}

const size = (n: number) =>
  n < 1024 ? `${n} B` : n < 1024 ** 2 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 ** 2).toFixed(1)} MiB`;

/** The chat's media: uploads resume at start, received files go to `downloads`. */
export function chatMedia(options: {
  client: PostboxClient;
  store: ClientStore;
  server: string;
  credentials: string | (() => string);
  downloads: string;
  print: (line: string) => void;
  /** Called with the message id once a file's message is queued (the chat then shows its ticks). */
  onQueued: (messageId: string, label: string) => void;
}): ChatMedia {
  const { print } = options;
  const cred = options.credentials;
  const media = mediaClient(options.client, {
    // The media endpoint is on the WebSocket server's HTTP port.
    url: options.server.replace(/^ws/, 'http').replace(/\/[^/]*$/, '/media'),
    credentials: typeof cred === 'string' ? () => cred : cred,
    store: options.store,
    openSource: fileSource,
  });
  const labels = new Map<string, string>();
  const reported = new Map<string, number>();
  media.on('progress', (p) => {
    const pct = Math.floor((p.sent / p.total) * 4) * 25;
    if (pct > (reported.get(p.id) ?? -1) && pct < 100) {
      reported.set(p.id, pct);
      print(`  ↑ ${labels.get(p.id) ?? 'file'}: ${pct}%`);
    }
  });
  media.on('phase', (s) => {
    const label = labels.get(s.id) ?? 'file';
    if (s.phase === 'queued' && s.messageId) options.onQueued(s.messageId, label);
    else if (s.phase === 'failed') print(`  ✗ ${label} not sent: ${s.detail ?? s.reason}`);
  });
  media.on('error', () => undefined);
  void media.resume().then(async () => {
    const left = await media.pending();
    if (left.length > 0) print(`[resuming ${left.length} file upload(s) from the last run]`);
  });
  const describe = (body: Uint8Array): string | undefined => {
    let ref: MediaRef | undefined;
    try {
      ref = MediaClient.refOf(body);
    } catch {
      return '[a file with a broken reference]';
    }
    return ref && `[file ${ref.name ?? 'unnamed'}, ${ref.mime}, ${size(ref.size)}]`;
  };
  return {
    describe,
    receive(from, body) {
      let ref: MediaRef | undefined;
      try {
        ref = MediaClient.refOf(body);
      } catch {
        return;
      }
      if (!ref) return;
      mkdirSync(options.downloads, { recursive: true });
      // Never trust a sender's name as a path: the last component only, and never overwrite.
      const name = basename(ref.name ?? 'file').replace(/^\.+/, '') || 'file';
      let path = join(options.downloads, name);
      for (let i = 1; existsSync(path); i++) path = join(options.downloads, `${i}-${name}`);
      saveStream(media.downloadMedia(ref), path).then(
        () => print(`  ↓ saved ${from}'s ${name} to ${path}`),
        (e: Error & { code?: string }) =>
          print(
            `  ✗ ${from}'s ${name} ${e.code === 'corrupt_media' ? 'failed verification and was discarded' : `not saved: ${e.message}`}`,
          ),
      );
    },
    send(peer, path) {
      const abs = resolve(path);
      fileSource(abs).then(
        async (source) => {
          const name = basename(abs);
          const mime = MIME[extname(abs).toLowerCase()] ?? 'application/octet-stream';
          const id = await media.sendMedia(peer, source, { mime, name, sourceKey: abs });
          const label = `[file ${name}, ${size(source.size)}]`;
          labels.set(id, label);
          print(`  … ${label} uploading (encrypted on this device)`);
        },
        (e: Error) => print(`  ✗ cannot read ${path}: ${e.message}`),
      );
    },
  };
}
