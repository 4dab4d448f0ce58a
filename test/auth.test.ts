import { describe, expect, it } from 'vitest';
import { createHmac } from 'node:crypto';
import {
  DEFAULT_TOKEN_TTL_MS,
  insecureDevAuthenticator,
  signToken,
  tokenAuthenticator,
  verifyToken,
} from '../src/server/auth.js';
import { seededRandom } from '../src/util/clock.js';
import { badIds, validIds } from './fixtures/ids.js';

const SECRET = 'a-secret-of-at-least-16-bytes';

describe('signed tokens: the server trusts nothing in hello but the signature', () => {
  it('a token signed with the secret authenticates as its user and device, until its expiry', async () => {
    const auth = tokenAuthenticator(SECRET);
    const expiresAt = Date.now() + 60_000;
    expect(await auth(signToken(SECRET, { user: 'alice', device: 'phone', expiresAt }), {})).toEqual({
      user: 'alice',
      device: 'phone',
      expiresAt,
    });
  });

  it('a token signed with another secret, or altered in any byte, is refused', async () => {
    const auth = tokenAuthenticator(SECRET);
    const good = signToken(SECRET, { user: 'alice', device: 'phone' });
    expect(
      await auth(signToken('another-secret-16-bytes!', { user: 'alice', device: 'phone' }), {}),
    ).toBeNull();
    // Claim to be bob with alice's signature.
    const [prefix, , mac] = good.split('.');
    const forgedClaims = Buffer.from(JSON.stringify({ u: 'bob', d: 'phone' })).toString('base64url');
    expect(await auth(`${prefix}.${forgedClaims}.${mac}`, {})).toBeNull();
    // Every character counts, the slack bits of a last base64url character included.
    for (let i = 4; i < good.length; i++) {
      const c = good[i] === 'A' ? 'B' : 'A';
      expect(await auth(good.slice(0, i) + c + good.slice(i + 1), {})).toBeNull();
    }
  });

  it('an expired token is refused; one within its expiry is accepted', async () => {
    let now = 1_000_000;
    const auth = tokenAuthenticator(SECRET, { clock: { now: () => now } });
    const token = signToken(SECRET, { user: 'alice', device: 'phone', expiresAt: 2_000_000 });
    expect(await auth(token, {})).toEqual({ user: 'alice', device: 'phone', expiresAt: 2_000_000 });
    now = 2_000_000;
    expect(await auth(token, {})).toBeNull();
  });

  it('garbage credentials of any type are refused without throwing', async () => {
    const auth = tokenAuthenticator(SECRET);
    for (const cred of [
      undefined,
      null,
      42,
      {},
      [],
      '',
      'pb1',
      'pb1..',
      'pb1.a.b',
      'x'.repeat(5000),
      'pb1.!!!.???',
    ]) {
      expect(await auth(cred, {})).toBeNull();
    }
  });

  it('a short secret is rejected up front', () => {
    expect(() => tokenAuthenticator('short')).toThrow(RangeError);
    expect(() => signToken('short', { user: 'a', device: 'b' })).toThrow(RangeError);
  });

  it('the insecure dev authenticator takes user/device strings and nothing else', async () => {
    const auth = insecureDevAuthenticator();
    expect(await auth('alice/phone', {})).toEqual({ user: 'alice', device: 'phone' });
    for (const cred of ['alice', 'a/b/c', '/x', 'x/', 42, null]) expect(await auth(cred, {})).toBeNull();
    for (const { id, why } of badIds(51, 128)) expect(await auth(`${id}/phone`, {}), why).toBeNull();
    for (const { id, why } of badIds(54, 64)) expect(await auth(`alice/${id}`, {}), why).toBeNull();
  });

  it('a token has one encoding: re-encoded with padding, standard base64, junk or spaces it is refused (seeded)', () => {
    const rnd = seededRandom(5);
    let variants = 0;
    for (const user of validIds(52, 40, 128)) {
      const token = signToken(SECRET, { user, device: 'phone' }, 1000);
      expect(verifyToken(SECRET, token, 2000)).toMatchObject({ user, device: 'phone' });
      const [, payload, mac] = token.split('.') as [string, string, string];
      const at = (s: string) => Math.floor(rnd() * (s.length + 1));
      const junk = (s: string) => {
        const i = at(s);
        return s.slice(0, i) + ' \t\n=.!*~%+/'[Math.floor(rnd() * 12)] + s.slice(i);
      };
      const part = (f: (s: string) => string): string[] => [
        `pb1.${f(payload)}.${mac}`,
        `pb1.${payload}.${f(mac)}`,
      ];
      const others = [
        ...part((s) => s + '='.repeat(1 + Math.floor(rnd() * 2))),
        ...part((s) => Buffer.from(s, 'base64url').toString('base64')),
        ...part(junk),
        ...part((s) => ` ${s}`),
        ` ${token}`,
        `${token}\n`,
        token.replace('pb1', 'PB1'),
      ].filter((t) => t !== token);
      for (const t of others) expect(verifyToken(SECRET, t, 2000), JSON.stringify(t)).toBeNull();
      variants += others.length;
    }
    expect(variants).toBeGreaterThan(300);
  });

  it('the claims have one text too, and obey the id rule: a correctly signed variant is still refused', () => {
    // Signed with the secret, as an insider's or a buggy issuer's would be: only the text differs.
    const signed = (json: string) => {
      const payload = Buffer.from(json).toString('base64url');
      const mac = createHmac('sha256', SECRET).update(`pb1.${payload}`).digest('base64url');
      return `pb1.${payload}.${mac}`;
    };
    expect(verifyToken(SECRET, signed('{"u":"alice","d":"phone","exp":5000}'), 1000)).toEqual({
      user: 'alice',
      device: 'phone',
      expiresAt: 5000,
    });
    for (const json of [
      '{"d":"phone","u":"alice","exp":5000}',
      '{"u":"alice", "d":"phone","exp":5000}',
      '{"u":"alice","d":"phone","exp":5000.0}',
      '{"u":"alice","d":"phone","exp":5e3}',
      '{"u":"\\u0061lice","d":"phone","exp":5000}',
      '{"u":"alice","d":"phone","exp":5000,"x":1}',
      '{"u":"alice","u":"alice","d":"phone","exp":5000}',
      '{"u":"alice","d":"phone","exp":5000}\n',
    ]) {
      expect(verifyToken(SECRET, signed(json), 1000), json).toBeNull();
    }
    for (const { id, why } of badIds(53, 128)) {
      expect(verifyToken(SECRET, signed(JSON.stringify({ u: id, d: 'phone' })), 1000), why).toBeNull();
      expect(() => signToken(SECRET, { user: id, device: 'phone' }), why).toThrow(
        expect.objectContaining({ code: 'invalid_frame' }),
      );
    }
  });

  it('a token signed without an expiry expires after 24 hours; only an explicit null never expires', () => {
    const now = 1_700_000_000_000;
    const day = signToken(SECRET, { user: 'alice', device: 'phone' }, now);
    expect(verifyToken(SECRET, day, now + DEFAULT_TOKEN_TTL_MS - 1)?.expiresAt).toBe(
      now + DEFAULT_TOKEN_TTL_MS,
    );
    expect(verifyToken(SECRET, day, now + DEFAULT_TOKEN_TTL_MS)).toBeNull();
    expect(DEFAULT_TOKEN_TTL_MS).toBe(24 * 3600_000);
    const forever = signToken(SECRET, { user: 'alice', device: 'phone', expiresAt: null }, now);
    expect(verifyToken(SECRET, forever, now + 100 * 365 * DEFAULT_TOKEN_TTL_MS)).toEqual({
      user: 'alice',
      device: 'phone',
    });
  });
});
