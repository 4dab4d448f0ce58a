import { describe, expect, it } from 'vitest';
import { insecureDevAuthenticator, signToken, tokenAuthenticator, verifyToken } from '../src/server/auth.js';

const SECRET = 'a-secret-of-at-least-16-bytes';

describe('signed tokens: the server trusts nothing in hello but the signature', () => {
  it('a token signed with the secret authenticates as its user and device', async () => {
    const auth = tokenAuthenticator(SECRET);
    expect(await auth(signToken(SECRET, { user: 'alice', device: 'phone' }), {})).toEqual({
      user: 'alice',
      device: 'phone',
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
    for (let i = 4; i < good.length; i += 7) {
      const c = good[i] === 'A' ? 'B' : 'A';
      const tampered = good.slice(0, i) + c + good.slice(i + 1);
      const r = await auth(tampered, {});
      // Base64url has slack bits in its last character; a change there may decode identically.
      if (r !== null) expect(verifyToken(SECRET, tampered)).toEqual({ user: 'alice', device: 'phone' });
    }
  });

  it('an expired token is refused; one within its expiry is accepted', async () => {
    let now = 1_000_000;
    const auth = tokenAuthenticator(SECRET, { clock: { now: () => now } });
    const token = signToken(SECRET, { user: 'alice', device: 'phone', expiresAt: 2_000_000 });
    expect(await auth(token, {})).toEqual({ user: 'alice', device: 'phone' });
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
  });
});
