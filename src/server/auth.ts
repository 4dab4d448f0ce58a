import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import {
  assertDeviceId,
  assertUserId,
  deviceIdSchema,
  isDeviceId,
  isUserId,
  userIdSchema,
} from '../protocol/ids.js';
import { systemClock, type Clock } from '../util/clock.js';
import type { Authenticate, AuthResult } from './options.js';

/** What a signed token says about its bearer. */
export interface TokenClaims {
  /** The user id (see `isUserId`). */
  user: string;
  /** The device id (see `isDeviceId`). */
  device: string;
  /** Expiry, ms since the epoch; absent means no expiry. */
  expiresAt?: number;
}

/** What {@link signToken} is asked to sign. */
export interface TokenRequest {
  /** The user id (see `isUserId`). */
  user: string;
  /** The device id (see `isDeviceId`). */
  device: string;
  /**
   * When the token stops working, ms since the epoch; a session it opened is closed then (close
   * code 4007, and the client asks its `credentials` function for a fresh one). `null` signs a
   * token that never expires: only your `authenticate` hook can then cut it off (see
   * docs/operations.md, "Cutting off a user or device").
   * @default now + {@link DEFAULT_TOKEN_TTL_MS}
   */
  expiresAt?: number | null;
}

/** Lifetime of a token signed without an explicit `expiresAt`: 24 hours. */
export const DEFAULT_TOKEN_TTL_MS = 24 * 3600_000;

const PREFIX = 'pb1';
const MAX_TOKEN_CHARS = 2048;
const claimsSchema = z.strictObject({
  u: userIdSchema,
  d: deviceIdSchema,
  exp: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
});
type WireClaims = z.infer<typeof claimsSchema>;

/**
 * The one text of a token's claims: keys in this order, no spaces, `exp` only when set. A token
 * whose payload is any other text for the same claims is refused, so one grant has one token.
 */
const claimsText = (c: WireClaims): string =>
  JSON.stringify(c.exp === undefined ? { u: c.u, d: c.d } : { u: c.u, d: c.d, exp: c.exp });

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

/**
 * Decodes canonical base64url (no padding, nothing outside the alphabet, zero slack bits), or
 * `null`. Node's decoder is lenient: it skips junk and takes padding and standard base64, so
 * many strings would decode to the same bytes; only the one that re-encodes to itself counts.
 */
function fromCanonicalB64url(text: string): Buffer | null {
  const bytes = Buffer.from(text, 'base64url');
  return bytes.length > 0 && b64url(bytes) === text ? bytes : null;
}

function sign(secret: string | Uint8Array, payload: string): Buffer {
  return createHmac('sha256', secret).update(`${PREFIX}.${payload}`).digest();
}

/**
 * Signs a bearer token for {@link tokenAuthenticator}: `pb1.<claims>.<HMAC-SHA256>`, both parts
 * base64url without padding. Issue these from your own login service; anyone holding the secret
 * can mint them. Tokens expire after {@link DEFAULT_TOKEN_TTL_MS} unless `expiresAt` says
 * otherwise.
 * @param now - the time the default expiry counts from. @default Date.now()
 * @throws RangeError for a secret under 16 bytes; PostboxError `invalid_frame` for an invalid
 * user or device id.
 * @example
 * const token = signToken(process.env.POSTBOX_SECRET!, { user: 'alice', device: 'phone' });
 */
export function signToken(secret: string | Uint8Array, claims: TokenRequest, now = Date.now()): string {
  if (secretLength(secret) < 16) throw new RangeError('the token secret must be at least 16 bytes');
  assertUserId(claims.user, 'token user');
  assertDeviceId(claims.device, 'token device');
  const body: WireClaims = { u: claims.user, d: claims.device };
  const exp = claims.expiresAt === undefined ? now + DEFAULT_TOKEN_TTL_MS : claims.expiresAt;
  if (exp !== null) body.exp = Math.floor(exp);
  if (!claimsSchema.safeParse(body).success) throw new RangeError('expiresAt must be a time after 1970');
  const payload = b64url(claimsText(body));
  return `${PREFIX}.${payload}.${b64url(sign(secret, payload))}`;
}

/**
 * Verifies a token made by {@link signToken}; returns its claims, or `null` when it is malformed,
 * forged, expired or not in its one canonical encoding (base64url without padding, the claims
 * as {@link signToken} writes them). Comparison is constant-time.
 */
export function verifyToken(
  secret: string | Uint8Array,
  token: unknown,
  now = Date.now(),
): TokenClaims | null {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_CHARS) return null;
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== PREFIX) return null;
  const [, payload, mac] = parts as [string, string, string];
  const given = fromCanonicalB64url(mac);
  const json = fromCanonicalB64url(payload);
  if (!given || !json) return null;
  const expected = sign(secret, payload);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let raw: unknown;
  const text = json.toString('utf8');
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  const parsed = claimsSchema.safeParse(raw);
  if (!parsed.success || claimsText(parsed.data) !== text) return null;
  if (parsed.data.exp !== undefined && parsed.data.exp <= now) return null;
  const claims: TokenClaims = { user: parsed.data.u, device: parsed.data.d };
  if (parsed.data.exp !== undefined) claims.expiresAt = parsed.data.exp;
  return claims;
}

/**
 * An `authenticate` hook that accepts tokens signed with `secret` (see {@link signToken}). The
 * safe default of `postbox serve`: the server trusts nothing in `hello` but the signature.
 * @example
 * createServer({ store, authenticate: tokenAuthenticator(process.env.POSTBOX_SECRET!) });
 */
export function tokenAuthenticator(
  secret: string | Uint8Array,
  options: { clock?: Pick<Clock, 'now'> } = {},
): Authenticate {
  if (secretLength(secret) < 16) throw new RangeError('the token secret must be at least 16 bytes');
  const clock = options.clock ?? systemClock;
  return (credentials): AuthResult | null => {
    const claims = verifyToken(secret, credentials, clock.now());
    if (!claims) return null;
    // The session ends when the token does (the server closes it with 4007).
    const auth: AuthResult = { user: claims.user, device: claims.device };
    if (claims.expiresAt !== undefined) auth.expiresAt = claims.expiresAt;
    return auth;
  };
}

/**
 * An `authenticate` hook that believes whatever `user/device` string a client sends (each a
 * valid id). For local play only: anyone can be anyone. `postbox serve` uses it only with
 * `--insecure-dev-auth`, and says so loudly.
 */
export function insecureDevAuthenticator(): Authenticate {
  return (credentials): AuthResult | null => {
    if (typeof credentials !== 'string') return null;
    const [user, device, ...rest] = credentials.split('/');
    return rest.length === 0 && isUserId(user) && isDeviceId(device)
      ? { user: user!, device: device! }
      : null;
  };
}

function secretLength(secret: string | Uint8Array): number {
  return typeof secret === 'string' ? Buffer.byteLength(secret) : secret.byteLength;
}
