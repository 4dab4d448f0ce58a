/**
 * Download grants: short-lived signed URLs for one blob. The media server issues one only to a
 * device of the blob's audience; the URL alone then opens the download (so it can be handed to an
 * `<img>`, a download manager or a CDN) until it expires.
 * @packageDocumentation
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Signs `blob` until `expires` (ms since the epoch): the `t` query parameter of a download URL. */
export function signGrant(secret: string | Uint8Array, blob: string, expires: number): string {
  const mac = createHmac('sha256', secret).update(`pbg1.${blob}.${expires}`).digest('base64url');
  return `${expires.toString(36)}.${mac}`;
}

/** Whether `token` grants `blob` at `now`. */
export function checkGrant(secret: string | Uint8Array, blob: string, token: string, now: number): boolean {
  const dot = token.indexOf('.');
  if (dot <= 0 || token.length > 128) return false;
  const expires = parseInt(token.slice(0, dot), 36);
  if (!Number.isSafeInteger(expires) || expires < now) return false;
  const want = Buffer.from(signGrant(secret, blob, expires));
  const got = Buffer.from(token);
  return want.length === got.length && timingSafeEqual(want, got);
}
