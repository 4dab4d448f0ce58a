import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { systemClock, type Clock } from '../util/clock.js';
import type { Authenticate, AuthResult } from './engine.js';

/** What a signed token says about its bearer. */
export interface TokenClaims {
  /** The user id. */
  user: string;
  /** The device id. */
  device: string;
  /** Expiry, ms since the epoch; absent means no expiry. */
  expiresAt?: number;
}

const PREFIX = 'pb1';
const MAX_TOKEN_CHARS = 2048;
const claimsSchema = z.object({
  u: z.string().min(1).max(128),
  d: z.string().min(1).max(64),
  exp: z.number().int().positive().optional(),
});

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

function sign(secret: string | Uint8Array, payload: string): Buffer {
  return createHmac('sha256', secret).update(`${PREFIX}.${payload}`).digest();
}

/**
 * Signs a bearer token for {@link tokenAuthenticator}: `pb1.<claims>.<HMAC-SHA256>`, both parts
 * base64url. Issue these from your own login service; anyone holding the secret can mint them.
 * @example
 * const token = signToken(process.env.POSTBOX_SECRET!, { user: 'alice', device: 'phone', expiresAt: Date.now() + 86_400_000 });
 */
export function signToken(secret: string | Uint8Array, claims: TokenClaims): string {
  if (secretLength(secret) < 16) throw new RangeError('the token secret must be at least 16 bytes');
  const body: z.infer<typeof claimsSchema> = { u: claims.user, d: claims.device };
  if (claims.expiresAt !== undefined) body.exp = Math.floor(claims.expiresAt);
  claimsSchema.parse(body);
  const payload = b64url(JSON.stringify(body));
  return `${PREFIX}.${payload}.${b64url(sign(secret, payload))}`;
}

/**
 * Verifies a token made by {@link signToken}; returns its claims, or `null` when it is malformed,
 * forged or expired. Comparison is constant-time.
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
  const expected = sign(secret, payload);
  const given = Buffer.from(mac, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return null;
  }
  const parsed = claimsSchema.safeParse(raw);
  if (!parsed.success) return null;
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
    return claims ? { user: claims.user, device: claims.device } : null;
  };
}

/**
 * An `authenticate` hook that believes whatever `user/device` string a client sends. For local
 * play only: anyone can be anyone. `postbox serve` uses it only with `--insecure-dev-auth`, and
 * says so loudly.
 */
export function insecureDevAuthenticator(): Authenticate {
  return (credentials): AuthResult | null => {
    if (typeof credentials !== 'string') return null;
    const m = /^([^/]{1,128})\/([^/]{1,64})$/.exec(credentials);
    return m ? { user: m[1]!, device: m[2]! } : null;
  };
}

function secretLength(secret: string | Uint8Array): number {
  return typeof secret === 'string' ? Buffer.byteLength(secret) : secret.byteLength;
}
