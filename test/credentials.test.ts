// Credentials have a lifetime and can be withdrawn: a session ends when its token does (close
// 4007), the client comes back with fresh credentials (or, with static ones, stops), a client
// whose credentials stay stale backs off instead of hammering the server, and the app can cut a
// user or a device off at once with server.disconnect.
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnectionState } from '../src/client/index.js';
import { CLOSE_CODES } from '../src/protocol/index.js';
import { signToken, tokenAuthenticator, type Authenticate } from '../src/server/index.js';
import { makeWorld, text, type TestDevice, type World } from './helpers.js';

const TOKEN_SECRET = 'a-token-secret-of-enough-bytes';
const MINUTE = 60_000;

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** A world whose server takes signed tokens, checked on the world's virtual clock. */
async function tokenWorld(): Promise<World> {
  let w: World | undefined = undefined;
  const auth = tokenAuthenticator(TOKEN_SECRET, { clock: { now: () => w!.clock.now() } });
  w = await makeWorld({ server: { authenticate: (cred, ctx) => auth(cred, ctx) } });
  return w;
}

/** A token for alice's phone, valid for `ttl` ms of the world's clock. */
const aliceToken = (w: World, ttl: number): string =>
  signToken(TOKEN_SECRET, { user: 'alice', device: 'phone', expiresAt: w.clock.now() + ttl });

/** Session ends on the server, by close code. */
function closeCodes(w: World): number[] {
  const codes: number[] = [];
  w.server.on('offline', (_d, code) => codes.push(code));
  return codes;
}

function states(d: TestDevice): Array<[ConnectionState, string | undefined]> {
  const out: Array<[ConnectionState, string | undefined]> = [];
  d.client.on('connection', (s, e) => out.push([s, e?.code]));
  return out;
}

describe('credentials expire and can be withdrawn', () => {
  it('a session is closed when its token expires and the client reconnects with fresh credentials', async () => {
    const w = (world = await tokenWorld());
    let issued = 0;
    const credentials = () => {
      issued++;
      return aliceToken(w, MINUTE);
    };
    const alice = await w.device('alice', 'phone', { client: { credentials } });
    const bobToken = signToken(TOKEN_SECRET, {
      user: 'bob',
      device: 'phone',
      expiresAt: w.clock.now() + 60 * MINUTE,
    });
    const bob = await w.device('bob', 'phone', { client: { credentials: bobToken } });
    const codes = closeCodes(w);
    expect(alice.client.state).toBe('open');
    await w.advance(MINUTE + 1000);
    expect(codes).toEqual([CLOSE_CODES.reauthenticate]);
    expect(issued).toBe(2);
    expect(alice.client.state).toBe('open');
    const id = await bob.client.send('alice', text('after the new token'));
    await w.advance(200);
    expect(alice.messages.map((m) => m.id)).toEqual([id]);
  });

  it('credentials that stay expired are retried with a growing backoff, not a hot loop, until fresh ones come', async () => {
    const w = (world = await tokenWorld());
    const stale = aliceToken(w, MINUTE);
    let fresh = false;
    let issued = 0;
    const credentials = () => {
      issued++;
      return fresh ? aliceToken(w, 60 * MINUTE) : stale;
    };
    // The engine's default backoff (0.5 s doubling to 30 s), not the test world's quick one.
    const opts = { credentials, backoffBaseMs: 500, backoffMaxMs: 30_000 };
    const alice = await w.device('alice', 'phone', { client: opts });
    const codes = closeCodes(w);
    await w.advance(MINUTE + 1000);
    expect(codes).toEqual([CLOSE_CODES.reauthenticate]);
    const before = issued;
    await w.advance(10 * MINUTE);
    // Ceilings 0.5, 1, 2, … 30 s with full jitter: some 30-40 tries in ten minutes, not thousands.
    expect(issued - before).toBeGreaterThan(5);
    expect(issued - before).toBeLessThan(80);
    expect(['backoff', 'connecting', 'handshaking']).toContain(alice.client.state);
    fresh = true;
    await w.advance(MINUTE);
    expect(alice.client.state).toBe('open');
  });

  it('static credentials that expire close the client for good with unauthorized', async () => {
    const w = (world = await tokenWorld());
    const token = aliceToken(w, MINUTE);
    const alice = await w.device('alice', 'phone', { client: { credentials: token } });
    const seen = states(alice);
    await w.advance(MINUTE + 1000);
    expect(alice.client.state).toBe('closed');
    expect(seen.at(-1)).toEqual(['closed', 'unauthorized']);
  });

  it('an expiry already past in the hook answer refuses the hello', async () => {
    let now = () => 0;
    const w = (world = await makeWorld({
      server: { authenticate: () => ({ user: 'alice', device: 'phone', expiresAt: now() - 1 }) },
    }));
    now = () => w.clock.now();
    const raw = await w.raw();
    raw.send({ t: 'hello', v: [1, 1], cred: 'anything' });
    await w.advance(50);
    expect(raw.frames.map((f) => f.t)).toEqual(['err']);
    expect(raw.closed?.code).toBe(CLOSE_CODES.unauthorized);
  });

  it('server.disconnect also closes a device of the user that waits for link approval', async () => {
    const w = (world = await makeWorld({ server: { linking: 'approval' } }));
    await w.device('alice', 'phone');
    const tablet = await w.raw('tablet');
    await tablet.hello('alice', 'tablet');
    expect(tablet.frames.map((f) => f.t)).toEqual(['lcode']);
    await w.server.disconnect('alice');
    await w.advance(50);
    expect(tablet.closed?.code).toBe(CLOSE_CODES.reauthenticate);
  });

  it('server.disconnect cuts off one device or every device of a user at once; others keep messaging', async () => {
    const revoked = new Set<string>();
    const authenticate: Authenticate = (cred) => {
      const m = /^([^/]+)\/([^:]+):letmein$/.exec(String(cred));
      return m && !revoked.has(m[1]!) ? { user: m[1]!, device: m[2]! } : null;
    };
    const w = (world = await makeWorld({ server: { authenticate } }));
    const phone = await w.device('alice', 'phone');
    const laptop = await w.device('alice', 'laptop');
    const bob = await w.device('bob', 'phone');
    const codes = closeCodes(w);
    await w.server.disconnect('alice', 'laptop');
    await w.advance(100);
    expect(codes).toEqual([CLOSE_CODES.reauthenticate]);
    expect(laptop.client.state).toBe('closed'); // static credentials: for good
    expect(phone.client.state).toBe('open');
    revoked.add('alice'); // the hook refuses first, then the sessions go
    await w.server.disconnect('alice');
    await w.advance(100);
    expect(codes).toEqual([CLOSE_CODES.reauthenticate, CLOSE_CODES.reauthenticate]);
    expect(phone.client.state).toBe('closed');
    expect(w.server.onlineDevices()).toEqual([{ user: 'bob', device: 'phone' }]);
    const id = await bob.client.send('alice', text('waits in her inbox'));
    await w.advance(200);
    expect(bob.statusOf(id)).toBe('sent');
  });
});
