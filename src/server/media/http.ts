/**
 * The media server's HTTP endpoints: tus 1.0 resumable uploads (core + creation + termination),
 * attach/grant/ack, and downloads with HTTP `Range`. Written here rather than on `@tus/server`
 * (see docs/media.md, "Why not @tus/server"): the upload's lifetime, limits and audience live in
 * the ledger beside it, and the handler is a plain `(req, res)` function that `postbox serve`
 * mounts on its one HTTP server.
 *
 * ```
 * OPTIONS /media/uploads              tus discovery
 * POST    /media/uploads              create (Upload-Length)          → 201 Location
 * HEAD    /media/uploads/ID           stored offset                   → Upload-Offset
 * PATCH   /media/uploads/ID           append at Upload-Offset         → 204 Upload-Offset
 * DELETE  /media/uploads/ID           abandon
 * POST    /media/blobs/ID/attach      {"to": user | #group}           → 204
 * POST    /media/blobs/ID/grant       → {"url", "expiresAt"}  (audience only)
 * GET     /media/blobs/ID?t=GRANT     the blob, Range supported
 * POST    /media/blobs/ID/ack         this device is done with it
 * ```
 * Every route but the granted GET needs `Authorization: Bearer CREDENTIALS`, checked by the same
 * `authenticate` hook as the WebSocket connection. Errors are JSON `{ code, message }` with the
 * postbox error codes.
 * @packageDocumentation
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { mkdir, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { ErrorCode } from '../../protocol/errors.js';
import { systemClock, type Clock } from '../../util/clock.js';
import type { Authenticate } from '../options.js';
import type { BlobStore } from './blob-store.js';
import { checkGrant, signGrant } from './grants.js';
import type { MediaLedger, UploadRow } from './ledger.js';
import { LimitError, MediaRate, type MediaLimits, resolveLimits } from './limits.js';

/** Who may download a blob attached to `to`: users, and the devices that must ack it. */
export type ResolveAudience = (
  sender: { user: string; device: string },
  to: string,
) => Promise<{ users: string[]; devices: string[] } | undefined>;

/** Options of {@link mediaHttpHandler}. */
export interface MediaHttpOptions {
  /** Where finished blobs go. */
  store: BlobStore;
  /** The upload ledger. */
  ledger: MediaLedger;
  /** Local folder for uploads in progress. */
  stagingDir: string;
  /** The same hook as the server engine's. */
  authenticate: Authenticate;
  /** Resolves an attach's `to` into its audience (`postbox serve` reads the server store). */
  audience: ResolveAudience;
  /** Signs download grants (at least 16 bytes). */
  secret: string | Uint8Array;
  /** Sizes, rates and lifetimes (see {@link MediaLimits}). */
  limits?: Partial<MediaLimits>;
  /** URL path prefix. @default '/media' */
  prefix?: string;
  /** @default the system clock */
  clock?: Clock;
  /** Told about faults that are not the client's. */
  onError?: (e: unknown) => void;
}

/** A mounted media server. */
export interface MediaHttpHandler {
  /** Handles the request when its path is under the prefix; answers false otherwise. */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  /** Deletes what is due at `now` (expired, fully acked elsewhere, never attached); answers how many. */
  sweep(now?: number): Promise<number>;
  /** Bytes the PATCH handler has written per upload id since start (for tests and metrics). */
  readonly received: Map<string, number>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const TUS = { 'Tus-Resumable': '1.0.0' };
const ID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** A fresh random blob id: 26 Crockford base32 characters (130 bits). */
export function newBlobId(): string {
  return Array.from(randomBytes(26), (b) => CROCKFORD[b & 31]).join('');
}

async function readJson(req: IncomingMessage, max: number): Promise<unknown> {
  let size = 0;
  const parts: Buffer[] = [];
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > max) throw new HttpError(413, 'too_large', `body over ${max} bytes`);
    parts.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8') || '{}');
  } catch {
    throw new HttpError(400, 'invalid_frame', 'body is not JSON');
  }
}

const MAX_PENDING_WRITE = 8 * 1024 * 1024;

/**
 * Appends a PATCH body to the staged file and answers the new offset. Flowing mode rather than
 * `for await`: a request cut mid-body drops whatever an async iterator still buffered, and the
 * client would send those bytes again; 'data' hands over every byte that arrived. Writes are
 * queued in order, and the request is paused while more than 8 MiB wait for the disk.
 */
function appendBody(
  req: IncomingMessage,
  fh: FileHandle,
  at: number,
  length: number,
  onWritten: (n: number) => void,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let offset = at;
    let chain = Promise.resolve();
    let pending = 0;
    let failed: unknown;
    // What arrived while the previous write ran goes out in one `writev`: one thread-pool job
    // for several socket reads (64 KiB each), not one per read.
    const queued: Buffer[] = [];
    const writeQueued = async () => {
      const batch = queued.splice(0);
      let n = 0;
      for (const b of batch) n += b.length;
      const { bytesWritten } = await fh.writev(batch);
      if (bytesWritten !== n) throw new Error(`short write: ${bytesWritten} of ${n} bytes`);
      pending -= n;
      onWritten(n);
      if (pending <= MAX_PENDING_WRITE / 2) req.resume();
    };
    req.on('data', (c: Buffer) => {
      if (failed) return;
      if (offset + c.length > length) {
        failed = new HttpError(413, 'too_large', 'more bytes than Upload-Length');
        return;
      }
      offset += c.length;
      pending += c.length;
      if (pending > MAX_PENDING_WRITE) req.pause();
      queued.push(c);
      if (queued.length > 1) return; // a write is already due to take it
      chain = chain.then(writeQueued);
      chain.catch((e: unknown) => (failed ??= e));
    });
    const done = () => {
      chain.then(
        () => (failed ? reject(failed) : resolve(offset)),
        (e: unknown) => reject(e),
      );
    };
    req.once('end', done);
    req.once('close', done);
  });
}

/** The media server's request handler (mount it with `handle`). */
export function mediaHttpHandler(options: MediaHttpOptions): MediaHttpHandler {
  const prefix = options.prefix ?? '/media';
  const clock = options.clock ?? systemClock;
  const limits = resolveLimits(options.limits);
  const rate = new MediaRate(limits);
  const { store, ledger } = options;
  // Uploads with a PATCH being written, and when that write settles.
  const busy = new Map<string, Promise<void>>();
  const received = new Map<string, number>();
  const ready = mkdir(options.stagingDir, { recursive: true });
  const staged = (id: string) => join(options.stagingDir, id);

  async function who(req: IncomingMessage): Promise<{ user: string; device: string }> {
    const h = req.headers.authorization;
    if (!h?.startsWith('Bearer '))
      throw new HttpError(401, 'unauthorized', 'send Authorization: Bearer CREDENTIALS');
    const r = await options.authenticate(h.slice(7), { remoteAddress: req.socket.remoteAddress });
    if (!r || (r.expiresAt !== undefined && r.expiresAt <= clock.now()))
      throw new HttpError(401, 'unauthorized', 'credentials refused');
    return { user: r.user, device: r.device };
  }

  function owned(id: string, me: { user: string; device: string }): UploadRow {
    const row = ID.test(id) ? ledger.get(id) : undefined;
    // Someone else's upload looks the same as none: ids are not probed.
    if (!row || row.user !== me.user) throw new HttpError(404, 'forbidden', 'no such upload');
    return row;
  }

  async function offsetOf(id: string): Promise<number> {
    try {
      return (await stat(staged(id))).size;
    } catch {
      return 0;
    }
  }

  /** Moves a fully received upload into the blob store; idempotent (a crash may repeat it). */
  async function finish(row: UploadRow): Promise<void> {
    if (row.completed !== null) return;
    const path = staged(row.id);
    const fh = await open(path, 'r+');
    await fh.sync().finally(() => fh.close());
    if (store.adopt) await store.adopt(row.id, path, row.length);
    else await store.put(row.id, (await import('node:fs')).createReadStream(path), row.length);
    ledger.complete(row.id, clock.now());
    await rm(path, { force: true });
  }

  async function create(req: IncomingMessage, res: ServerResponse) {
    const me = await who(req);
    const length = Number(req.headers['upload-length']);
    if (!Number.isSafeInteger(length) || length < 0)
      throw new HttpError(400, 'invalid_frame', 'Upload-Length must be a non-negative integer');
    if (length > limits.maxUploadBytes)
      throw new HttpError(
        413,
        'too_large',
        `upload of ${length} bytes is over the limit of ${limits.maxUploadBytes}`,
      );
    const usage = ledger.usage(me.user);
    rate.admit(me.user, clock.now(), usage, length);
    const id = newBlobId();
    await ready;
    await (await open(staged(id), 'w')).close();
    ledger.create({ id, user: me.user, device: me.device, length, created: clock.now() });
    res.writeHead(201, { ...TUS, Location: `${prefix}/uploads/${id}`, 'Upload-Offset': '0' }).end();
  }

  async function head(id: string, req: IncomingMessage, res: ServerResponse) {
    const row = owned(id, await who(req));
    // A resuming client asks right after its connection broke, often before this side noticed:
    // the answer waits (boundedly) for that PATCH to settle, so it counts every byte it stored.
    const writing = busy.get(id);
    if (writing) await Promise.race([writing, new Promise((r) => setTimeout(r, 5000))]);
    if (row.completed === null && !busy.has(id) && (await offsetOf(id)) === row.length) await finish(row);
    const offset = row.completed !== null || ledger.get(id)?.completed ? row.length : await offsetOf(id);
    res
      .writeHead(200, {
        ...TUS,
        'Upload-Offset': String(offset),
        'Upload-Length': String(row.length),
        'Cache-Control': 'no-store',
      })
      .end();
  }

  async function patch(id: string, req: IncomingMessage, res: ServerResponse) {
    const row = owned(id, await who(req));
    if (req.headers['content-type'] !== 'application/offset+octet-stream')
      throw new HttpError(415, 'invalid_frame', 'Content-Type must be application/offset+octet-stream');
    if (busy.has(id))
      throw new HttpError(423, 'rate_limited', 'another request is writing this upload', {
        'Retry-After': '1',
      });
    if (row.completed !== null)
      throw new HttpError(409, 'invalid_frame', 'upload already complete', {
        'Upload-Offset': String(row.length),
      });
    let settle!: () => void;
    busy.set(id, new Promise<void>((r) => (settle = r)));
    try {
      const at = await offsetOf(id);
      if (Number(req.headers['upload-offset']) !== at)
        throw new HttpError(409, 'invalid_frame', `Upload-Offset must be ${at}`, {
          'Upload-Offset': String(at),
        });
      const fh = await open(staged(id), 'a');
      let offset = at;
      let over = false;
      try {
        offset = await appendBody(req, fh, at, row.length, (n) =>
          received.set(id, (received.get(id) ?? 0) + n),
        );
      } catch (e) {
        if (!(e instanceof HttpError)) throw e;
        over = true;
      } finally {
        await fh.close();
      }
      if (over) throw new HttpError(413, 'too_large', 'more bytes than Upload-Length');
      // The client went away: what arrived is stored and HEAD will say so.
      if (!req.complete) return;
      if (offset === row.length) await finish(row);
      res.writeHead(204, { ...TUS, 'Upload-Offset': String(offset) }).end();
    } finally {
      busy.delete(id);
      settle();
    }
  }

  async function terminate(id: string, req: IncomingMessage, res: ServerResponse) {
    const row = owned(id, await who(req));
    await drop(row);
    res.writeHead(204, TUS).end();
  }

  async function drop(row: UploadRow) {
    await rm(staged(row.id), { force: true });
    if (row.completed !== null) await store.delete(row.id);
    ledger.remove(row.id);
  }

  async function attach(id: string, req: IncomingMessage, res: ServerResponse) {
    const me = await who(req);
    const row = owned(id, me);
    if (row.completed === null) throw new HttpError(409, 'invalid_frame', 'upload not complete');
    const body = (await readJson(req, 1024)) as { to?: unknown };
    if (typeof body.to !== 'string' || body.to.length > 200)
      throw new HttpError(400, 'invalid_frame', 'body must be {"to": recipient}');
    const aud = await options.audience(me, body.to);
    if (!aud) throw new HttpError(403, 'forbidden', `cannot attach to ${body.to}`);
    const users = [...new Set([me.user, ...aud.users])];
    const pending = aud.devices.filter((d) => d !== `${me.user}/${me.device}`);
    ledger.attach(id, clock.now(), users, pending, clock.now() + limits.retentionMs);
    res.writeHead(204).end();
  }

  async function grant(id: string, req: IncomingMessage, res: ServerResponse) {
    const me = await who(req);
    const row = ID.test(id) ? ledger.get(id) : undefined;
    const allowed = row && row.completed !== null && (row.user === me.user || row.audience.includes(me.user));
    if (!allowed) throw new HttpError(403, 'forbidden', 'no such blob for this device');
    const expiresAt = clock.now() + limits.grantTtlMs;
    const url = `${prefix}/blobs/${id}?t=${signGrant(options.secret, id, expiresAt)}`;
    res
      .writeHead(200, { 'Content-Type': 'application/json' })
      .end(JSON.stringify({ url, expiresAt, size: row.length }));
  }

  async function download(id: string, url: URL, req: IncomingMessage, res: ServerResponse) {
    if (!ID.test(id) || !checkGrant(options.secret, id, url.searchParams.get('t') ?? '', clock.now()))
      throw new HttpError(403, 'forbidden', 'missing, wrong or expired grant');
    const size = (await store.stat(id))?.size;
    if (size === undefined) throw new HttpError(404, 'forbidden', 'blob is gone');
    const m = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
    const start = m ? Number(m[1]) : 0;
    const end = m && m[2] ? Math.min(Number(m[2]) + 1, size) : size;
    if (m && (start >= size || end <= start) && size > 0)
      throw new HttpError(416, 'invalid_frame', 'range not satisfiable', {
        'Content-Range': `bytes */${size}`,
      });
    const headOnly = req.method === 'HEAD';
    const body = headOnly ? undefined : await store.get(id, { start, end });
    if (!headOnly && !body) throw new HttpError(404, 'forbidden', 'blob is gone');
    const headers: Record<string, string> = {
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(end - start),
      'Accept-Ranges': 'bytes',
      'Cache-Control': 'private, no-store',
    };
    if (m) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(m ? 206 : 200, headers);
    if (!body) return void res.end(); // HEAD: no stream opened (an unread file stream holds its fd)
    // Straight into the response: a `Readable.from` around the store's stream (a file stream for
    // the fs store) added an async-iterator hop per 256 KiB piece.
    await pipeline(body, res).catch(() => undefined);
  }

  async function ack(id: string, req: IncomingMessage, res: ServerResponse) {
    const me = await who(req);
    const row = ID.test(id) ? ledger.get(id) : undefined;
    if (!row || !row.audience.includes(me.user))
      throw new HttpError(403, 'forbidden', 'no such blob for this device');
    const left = ledger.ack(id, `${me.user}/${me.device}`);
    if (left === 0) await drop(row);
    res.writeHead(204).end();
  }

  async function route(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const rest = url.pathname.slice(prefix.length);
    const m = req.method ?? 'GET';
    if (rest === '/uploads') {
      if (m === 'OPTIONS')
        return void res
          .writeHead(204, {
            ...TUS,
            'Tus-Version': '1.0.0',
            'Tus-Extension': 'creation,termination',
            'Tus-Max-Size': String(limits.maxUploadBytes),
          })
          .end();
      if (m === 'POST') return create(req, res);
    }
    const up = /^\/uploads\/([^/]+)$/.exec(rest);
    if (up) {
      if (m !== 'OPTIONS' && req.headers['tus-resumable'] !== '1.0.0')
        throw new HttpError(412, 'unsupported_version', 'Tus-Resumable: 1.0.0 required', {
          'Tus-Version': '1.0.0',
        });
      if (m === 'HEAD') return head(up[1]!, req, res);
      if (m === 'PATCH') return patch(up[1]!, req, res);
      if (m === 'DELETE') return terminate(up[1]!, req, res);
    }
    const bl = /^\/blobs\/([^/]+)(\/(attach|grant|ack))?$/.exec(rest);
    if (bl) {
      const [, id, , verb] = bl as unknown as [string, string, string?, string?];
      if (!verb && (m === 'GET' || m === 'HEAD')) return download(id, url, req, res);
      if (m === 'POST' && verb === 'attach') return attach(id, req, res);
      if (m === 'POST' && verb === 'grant') return grant(id, req, res);
      if (m === 'POST' && verb === 'ack') return ack(id, req, res);
    }
    throw new HttpError(404, 'invalid_frame', 'no such media endpoint');
  }

  return {
    received,
    handle(req, res) {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== prefix && !url.pathname.startsWith(`${prefix}/`)) return false;
      route(req, res, url).catch((e: unknown) => {
        const he =
          e instanceof HttpError
            ? e
            : e instanceof LimitError
              ? new HttpError(
                  e.status,
                  e.code,
                  e.message,
                  e.retryAfterS ? { 'Retry-After': String(e.retryAfterS) } : {},
                )
              : new HttpError(500, 'internal', 'media server fault');
        if (!(e instanceof HttpError || e instanceof LimitError)) options.onError?.(e);
        if (res.headersSent) return void res.destroy();
        res
          .writeHead(he.status, { ...TUS, 'Content-Type': 'application/json', ...he.headers })
          .end(JSON.stringify({ code: he.code, message: he.message }));
        req.resume();
      });
      return true;
    },
    async sweep(now = clock.now()) {
      let n = 0;
      for (;;) {
        const due = ledger.due(now, limits.unattachedMs, 100).filter((r) => !busy.has(r.id));
        for (const row of due) await drop(row);
        n += due.length;
        if (due.length < 100) return n;
      }
    },
  };
}
