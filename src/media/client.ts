/**
 * The media client: `sendMedia` and `downloadMedia` on top of a `PostboxClient`, using only its
 * public API and its client store. Browser-safe.
 *
 * A media send is durable from the moment `sendMedia` resolves: its upload state (key, tus URL,
 * confirmed offset and encryption checkpoint) is in the client store, so it resumes after a cut
 * connection and after an app restart ({@link MediaClient.resume}). Its life:
 *
 * | phase       | meaning                                                   | next          |
 * | ----------- | --------------------------------------------------------- | ------------- |
 * | `uploading` | encrypting and uploading, resumable                       | `uploaded`    |
 * | `uploaded`  | every byte on the server; attaching to the conversation   | `queued`      |
 * | `queued`    | the message with the reference is in the client's outbox  | (engine)      |
 * | `failed`    | the server refused it (too large, unauthorized, …)        | —             |
 *
 * Once `queued`, the message is an ordinary outbox message with its own id (`messageId`): the
 * client's `status` events give its ✓ and ✓✓. The message takes its place in the conversation
 * when the upload completes, not when `sendMedia` was called: a sequence number held for the
 * length of an upload would stall every later message of the conversation at the recipients.
 * @packageDocumentation
 */
import { EventEmitter } from 'eventemitter3';
import { Packr } from 'msgpackr';
import type { PostboxClient } from '../client/engine.js';
import type { ClientStore } from '../client/store.js';
import { PostboxError, isPostboxError, type ErrorCode } from '../protocol/errors.js';
import { toStream } from './format.js';
import { type MediaEndpoint } from './http.js';
import { decodeMediaRef, encodeMediaRef, isMediaMessage, mediaRefOf, type MediaRef } from './ref.js';
import { freshSecret } from './stream.js';
import {
  ackMedia,
  attachMedia,
  blobSource,
  bytesSource,
  downloadPlain,
  uploadMedia,
  type DownloadOptions,
  type MediaSource,
  type UploadProgress,
} from './transfer.js';

/** What the sender says about a file. */
export interface SendMediaOptions {
  /** MIME type. */
  mime: string;
  /** File name shown to the recipient. */
  name?: string;
  /** A small preview (at most 16 KiB), sent inline in the message. */
  thumbnail?: Uint8Array;
  /** Pixel width. */
  width?: number;
  /** Pixel height. */
  height?: number;
  /** Duration in ms. */
  durationMs?: number;
  /**
   * A key the app can turn back into the file after a restart (a path, a stored file handle's
   * id): saved with the upload and handed to `openSource` by {@link MediaClient.resume}.
   */
  sourceKey?: string;
}

/** A media send's phase (see the module doc). */
export type MediaPhase = 'uploading' | 'uploaded' | 'queued' | 'failed';

/** A media send as {@link MediaClient.pending} lists it and `phase` events report it. */
export interface MediaSend {
  /** The id `sendMedia` returned. */
  id: string;
  /** Recipient user or `#group`. */
  to: string;
  phase: MediaPhase;
  /** Once `queued`: the id of the message that carries the reference. */
  messageId?: string;
  /** When `failed`: why. */
  reason?: ErrorCode;
  /** When `failed`: the server's words. */
  detail?: string;
}

/** Events of a {@link MediaClient}. */
export interface MediaEvents {
  /** A media send moved to another phase. */
  phase: (e: MediaSend) => void;
  /** Upload progress: ciphertext bytes stored on the server, of the total. */
  progress: (e: { id: string; sent: number; total: number }) => void;
  /** A background fault that was not a send's own failure (an ack that did not go through). */
  error: (e: unknown) => void;
}

/** Options of {@link mediaClient}. */
export interface MediaClientOptions extends MediaEndpoint {
  /** The client store the `PostboxClient` uses: upload state lives in its `media` namespace. */
  store: ClientStore;
  /** Re-opens a file from its `sourceKey` after a restart (see {@link MediaClient.resume}). */
  openSource?: (sourceKey: string) => MediaSource | Promise<MediaSource>;
  /** Fixed size of every upload request. @default adaptive: 4 MiB, doubling to 8 MiB on a fast link (see `UploadOptions.patchBytes`) */
  patchBytes?: number;
}

interface Saved {
  to: string;
  opts: Omit<SendMediaOptions, 'sourceKey'>;
  sourceKey?: string;
  size: number;
  key: Uint8Array;
  baseNonce: Uint8Array;
  progress: UploadProgress;
  phase: MediaPhase;
  ref?: Uint8Array;
  messageId?: string;
  reason?: ErrorCode;
  detail?: string;
}

const NS = 'media';
const packr = new Packr({ useRecords: false, variableMapSize: true });
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(26)), (b) => CROCKFORD[b & 31]).join('');

/** Sends and receives media for one `PostboxClient`. */
export class MediaClient extends EventEmitter<MediaEvents> {
  private readonly running = new Map<string, AbortController>();
  private readonly sources = new Map<string, MediaSource>();
  private closed = false;

  /** Prefer {@link mediaClient}. */
  constructor(
    private readonly client: PostboxClient,
    private readonly options: MediaClientOptions,
  ) {
    super();
  }

  /**
   * Sends a file: stores the send durably (phase `uploading`) and resolves with its id at once;
   * the upload runs in the background, then the message with the reference is queued in the
   * client's outbox (`phase` event with `messageId`). `to` is a user or a `#group`.
   * @example
   * ```ts
   * const id = await media.sendMedia('bob', file, { mime: file.type, name: file.name });
   * media.on('progress', (p) => p.id === id && draw(p.sent / p.total));
   * ```
   */
  async sendMedia(
    to: string,
    file: MediaSource | Blob | Uint8Array,
    opts: SendMediaOptions,
  ): Promise<string> {
    if (this.closed) throw new PostboxError('closed', 'media client is closed');
    const source = file instanceof Uint8Array ? bytesSource(file) : 'open' in file ? file : blobSource(file);
    const { sourceKey, ...rest } = opts;
    // Validated now, so a bad thumbnail or MIME fails the call rather than the upload's end.
    encodeMediaRef(this.refOf('0000000000000000000000000A', new Uint8Array(32), source.size, rest));
    const id = newId();
    const secret = freshSecret();
    const saved: Saved = {
      to,
      opts: rest,
      size: source.size,
      key: secret.key,
      baseNonce: secret.baseNonce,
      progress: { confirmed: { offset: 0 } },
      phase: 'uploading',
      ...(sourceKey !== undefined ? { sourceKey } : {}),
    };
    await this.save(id, saved);
    this.sources.set(id, source);
    this.emit('phase', { id, to, phase: 'uploading' });
    this.start(id, saved);
    return id;
  }

  /** Media sends not yet queued or failed, from the store (survives restarts). */
  async pending(): Promise<MediaSend[]> {
    const rows = await this.options.store.listState(NS, 'up:');
    return rows.map(({ key, value }) => view(key.slice(3), packr.unpack(value) as Saved));
  }

  /**
   * Resumes every unfinished media send after a restart: files come back through `openSource`
   * (sends without a `sourceKey`, or whose source cannot be opened, fail with `misconfigured`).
   */
  async resume(): Promise<void> {
    for (const { key, value } of await this.options.store.listState(NS, 'up:')) {
      const id = key.slice(3);
      const saved = packr.unpack(value) as Saved;
      if (this.running.has(id) || saved.phase === 'failed' || saved.phase === 'queued') continue;
      if (!this.sources.has(id) && saved.phase === 'uploading') {
        try {
          if (saved.sourceKey === undefined || !this.options.openSource)
            throw new Error('no sourceKey/openSource');
          this.sources.set(id, await this.options.openSource(saved.sourceKey));
        } catch (e) {
          await this.fail(
            id,
            saved,
            new PostboxError('misconfigured', `cannot reopen the file: ${(e as Error).message}`),
          );
          continue;
        }
      }
      this.start(id, saved);
    }
  }

  /** Forgets a finished or failed send's record (a running one is aborted first). */
  async forget(id: string): Promise<void> {
    this.running.get(id)?.abort();
    this.sources.delete(id);
    await this.options.store.putState([{ ns: NS, key: `up:${id}`, value: undefined }]);
  }

  /**
   * The plaintext of a received media reference as a stream: fetched (resuming with `Range`),
   * every chunk authenticated, the size and the ciphertext hash checked before the stream ends;
   * any tampering or truncation errors the stream with `corrupt_media`. Once read to the end, the server is
   * told this device is done with the blob.
   */
  downloadMedia(ref: MediaRef, options: DownloadOptions = {}): ReadableStream<Uint8Array> {
    const ep = this.options;
    const onError = (e: unknown) => this.emit('error', e);
    async function* run() {
      yield* downloadPlain(ep, ref, options);
      ackMedia(ep, ref.id).catch(onError);
    }
    return toStream(run());
  }

  /** The media reference in a received message body, or undefined when it is not a media message. */
  static refOf(body: Uint8Array): MediaRef | undefined {
    return isMediaMessage(body) ? decodeMediaRef(body) : undefined;
  }

  /** Stops running uploads (they stay resumable). */
  close(): void {
    this.closed = true;
    for (const c of this.running.values()) c.abort();
  }

  private refOf(
    blob: string,
    key: Uint8Array,
    size: number,
    o: Omit<SendMediaOptions, 'sourceKey'>,
    h?: { plainHash: Uint8Array; cipherHash: Uint8Array },
  ): MediaRef {
    const zero = new Uint8Array(32);
    return mediaRefOf(
      blob,
      key,
      { size, plainHash: h?.plainHash ?? zero, cipherHash: h?.cipherHash ?? zero },
      o,
    );
  }

  private save(id: string, s: Saved): Promise<void> {
    return this.options.store.putState([{ ns: NS, key: `up:${id}`, value: packr.pack(s) }]);
  }

  private async fail(id: string, s: Saved, e: PostboxError): Promise<void> {
    s.phase = 'failed';
    s.reason = e.code;
    s.detail = e.message;
    await this.save(id, s);
    this.emit('phase', view(id, s));
  }

  private start(id: string, s: Saved): void {
    const ctl = new AbortController();
    this.running.set(id, ctl);
    this.drive(id, s, ctl.signal)
      .catch(async (e: unknown) => {
        if (ctl.signal.aborted) return;
        await this.fail(id, s, isPostboxError(e) ? e : new PostboxError('internal', String(e), { cause: e }));
      })
      .catch((e: unknown) => this.emit('error', e))
      .finally(() => this.running.delete(id));
  }

  private async drive(id: string, s: Saved, signal: AbortSignal): Promise<void> {
    if (s.phase === 'uploading') {
      const source = this.sources.get(id)!;
      const { blob, summary } = await uploadMedia(
        this.options,
        source,
        { key: s.key, baseNonce: s.baseNonce },
        s.progress,
        {
          signal,
          ...(this.options.patchBytes ? { patchBytes: this.options.patchBytes } : {}),
          onSaved: () => this.save(id, s),
          onProgress: (sent, total) => this.emit('progress', { id, sent, total }),
        },
      );
      await attachMedia(this.options, blob, s.to);
      s.ref = encodeMediaRef(this.refOf(blob, s.key, s.size, s.opts, summary));
      s.phase = 'uploaded';
      await this.save(id, s);
      this.sources.delete(id);
      this.emit('phase', view(id, s));
    }
    if (s.phase === 'uploaded') {
      // A crash between the outbox write and this record's update must not send it twice: a
      // message with exactly these bytes already in the outbox is this one.
      const ref = s.ref!;
      const same = (await this.options.store.outgoingIn(s.to)).find(
        (e) => e.body?.length === ref.length && e.body.every((b, i) => b === ref[i]),
      );
      s.messageId =
        same?.id ??
        (s.to.startsWith('#') ? await this.client.sendToGroup(s.to, ref) : await this.client.send(s.to, ref));
      s.phase = 'queued';
      this.emit('phase', view(id, s));
      await this.forget(id);
    }
  }
}

function view(id: string, s: Saved): MediaSend {
  const v: MediaSend = { id, to: s.to, phase: s.phase };
  if (s.messageId) v.messageId = s.messageId;
  if (s.reason) v.reason = s.reason;
  if (s.detail) v.detail = s.detail;
  return v;
}

/**
 * Media for a client: `sendMedia`, `downloadMedia`, `pending`, `resume`.
 * @example
 * ```ts
 * const media = mediaClient(client, { url: 'https://chat.example/media', credentials: getToken, store });
 * await media.resume(); // unfinished uploads from the last run
 * ```
 */
export function mediaClient(client: PostboxClient, options: MediaClientOptions): MediaClient {
  return new MediaClient(client, options);
}
