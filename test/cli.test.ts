// The `postbox` command as a user runs it (built `dist/cli/main.js`, real processes, real
// sockets): `serve` never accepts anyone silently, signed tokens work end to end, SIGTERM is a
// graceful "going away", and the terminal chat shows ticks live and sends what was typed while
// the server was down.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { WebSocket as WsWebSocket } from 'ws';
import { createClient, type ConnectionState } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import type { PostboxError } from '../src/protocol/errors.js';
import { verifyToken } from '../src/server/auth.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { killAll, run, type Proc } from './fixtures/proc.js';
import { sleep, tempDirs, until } from './fixtures/util.js';

const SECRET = 'a-test-secret-of-enough-bytes';
const TEST_MS = 30_000;
const dirs = tempDirs('cli');
const tempDir = () => dirs.make();
// Whatever a test started is gone after it, passed or failed.
afterEach(() => killAll());
afterAll(() => dirs.removeAll());

function postbox(...args: string[]): Proc {
  return run(['dist/cli/main.js', ...args]);
}

async function serve(data: string, ...flags: string[]): Promise<{ p: Proc; url: string; port: number }> {
  const port = flags.includes('--port') ? [] : ['--port', '0'];
  const p = postbox('serve', ...port, '--data', data, ...flags);
  const line = await p.waitFor('postbox listening on ');
  const url = line.split(' ')[3]!;
  return { p, url, port: Number(new URL(url).port) };
}

/** True once some output line of `p` contains `text` (the chat redraws its prompt with escapes). */
const printed = (p: Proc, text: string) => () => p.lines.some((l) => l.includes(text));

describe('the postbox command', () => {
  it('chat --help prints its usage and exits 0', async () => {
    const p = postbox('chat', '--help');
    expect(await p.exited).toBe(0);
    expect(p.lines.some((l) => l.startsWith('usage: postbox chat'))).toBe(true);
  });

  it('--version prints the package version and exits 0', async () => {
    const p = postbox('--version');
    expect(await p.exited).toBe(0);
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect(p.lines).toContain(`postbox ${version}`);
  });
});

describe('postbox serve', () => {
  it('refuses to start with no authentication configured: it never accepts anyone silently', async () => {
    const p = postbox('serve', '--port', '0', '--data', join(tempDir(), 'db.sqlite'));
    expect(await p.exited).toBe(2);
    expect(p.stderr()).toMatch(/no authentication configured: pass --secret/);
    expect(p.lines.some((l) => l.startsWith('postbox listening'))).toBe(false);
  });

  it('announces --insecure-dev-auth loudly on stderr', { timeout: TEST_MS }, async () => {
    const { p } = await serve(join(tempDir(), 'db.sqlite'), '--insecure-dev-auth');
    expect(p.stderr()).toMatch(/ANYONE CAN BE ANYONE/);
  });

  it(
    'with --secret, a token from `postbox token` is accepted and one signed with another secret is refused',
    { timeout: TEST_MS },
    async () => {
      const { url } = await serve(join(tempDir(), 'db.sqlite'), '--secret', SECRET);
      const token = (user: string, secret: string) =>
        execFileSync(
          process.execPath,
          ['dist/cli/main.js', 'token', '--user', user, '--device', 'd1', '--secret', secret],
          { encoding: 'utf8' },
        ).trim();
      const good = token('alice', SECRET);
      expect(verifyToken(SECRET, good)).toMatchObject({ user: 'alice', device: 'd1' });

      const clientWith = (credentials: string) => {
        const states: Array<{ state: ConnectionState; code?: string }> = [];
        const client = createClient({
          transport: websocketClientTransport({ url }),
          store: memoryClientStore(),
          credentials,
        });
        client.on('connection', (state, error) =>
          states.push({ state, code: (error as PostboxError | undefined)?.code }),
        );
        return { client, states };
      };
      const alice = clientWith(good);
      const mallory = clientWith(token('alice', 'some-other-secret-of-16+'));
      await until('alice online', () => alice.states.some((s) => s.state === 'open'));
      await until('mallory refused', () => mallory.states.some((s) => s.state === 'closed'));
      expect(mallory.states.at(-1)).toEqual({ state: 'closed', code: 'unauthorized' });
      expect(mallory.states.some((s) => s.state === 'open')).toBe(false);
      await alice.client.close();
      await mallory.client.close();
    },
  );

  it(
    '/metrics (behind its token) counts connections, sends, commits, deliveries, acks and errors in Prometheus format without the Node version; /healthz and /readyz answer',
    { timeout: TEST_MS },
    async () => {
      const { url, port } = await serve(
        join(tempDir(), 'db.sqlite'),
        '--insecure-dev-auth',
        '--metrics-token',
        'scrape-me-0123456789',
      );
      const http = `http://127.0.0.1:${port}`;
      expect((await fetch(`${http}/healthz`)).status).toBe(200);
      expect((await fetch(`${http}/readyz`)).status).toBe(200);
      const open = (user: string) =>
        createClient({
          transport: websocketClientTransport({ url }),
          store: memoryClientStore(),
          credentials: `${user}/d1`,
        });
      const alice = open('alice');
      const bob = open('bob');
      const got: string[] = [];
      bob.on('message', (m) => got.push(m.id));
      // Bob's device exists (registered by its hello) before Alice sends to him.
      await until('both online', () => alice.state === 'open' && bob.state === 'open');
      const ids = await Promise.all(
        [1, 2, 3].map((i) => alice.send('bob', new TextEncoder().encode(`m${i}`))),
      );
      await until('delivered', () => ids.every((id) => got.includes(id)));
      // A bad frame earns an error, which is counted by code.
      const ws = new WsWebSocket(url);
      ws.on('error', () => {});
      await once(ws, 'open');
      ws.send(Buffer.from([0xc1]));
      await once(ws, 'close');
      await sleep(100);
      // Without the token /metrics is not there; with it, it is.
      expect((await fetch(`${http}/metrics`)).status).toBe(404);
      const res = await fetch(`${http}/metrics`, {
        headers: { authorization: 'Bearer scrape-me-0123456789' },
      });
      expect(res.headers.get('content-type')).toMatch(/text\/plain/);
      const text = await res.text();
      const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
      expect(value(/^postbox_connections (\d+)$/m)).toBe(2);
      expect(value(/^postbox_sends_total\{kind="msg",result="ok"\} (\d+)$/m)).toBe(3);
      expect(value(/^postbox_deliveries_total (\d+)$/m)).toBeGreaterThanOrEqual(3);
      expect(value(/^postbox_commit_seconds_count\{result="ok"\} (\d+)$/m)).toBeGreaterThanOrEqual(1);
      expect(value(/^postbox_errors_total\{code="invalid_frame"\} (\d+)$/m)).toBe(1);
      expect(value(/^postbox_online_devices (\d+)$/m)).toBe(2);
      // No store count at scrape time, and no version for an attacker to match CVEs against.
      expect(text).not.toMatch(/postbox_inbox_entries|nodejs_version_info/);
      expect(value(/^postbox_sockets_open (\d+)$/m)).toBeGreaterThanOrEqual(2);
      expect(value(/^postbox_outbound_queued_bytes (\d+)$/m)).toBeGreaterThanOrEqual(0);
      // Acks leave the clients up to 25 ms late (ackDelayMs); by now they are in.
      expect(value(/^postbox_acks_total (\d+)$/m)).toBeGreaterThanOrEqual(3);
      // prom-client's defaults under one prefix, as docs/operations.md names them.
      expect(text).toMatch(/^postbox_process_cpu_seconds_total /m);
      expect(text).toMatch(/^postbox_nodejs_eventloop_lag_seconds /m);
      expect(text).not.toMatch(/postbox_process_process_|postbox_process_nodejs_/);
      await alice.close();
      await bob.close();
    },
  );

  it('SIGTERM closes every connection with 1001 "going away" and exits 0', { timeout: TEST_MS }, async () => {
    const { p, url } = await serve(join(tempDir(), 'db.sqlite'), '--secret', SECRET);
    const ws = new WsWebSocket(url);
    ws.on('error', () => {});
    await once(ws, 'open');
    const closed = once(ws, 'close') as Promise<[number, Buffer]>;
    p.proc.kill('SIGTERM');
    expect((await closed)[0]).toBe(1001);
    expect(await p.exited).toBe(0);
    expect(p.stderr()).toMatch(/SIGTERM, shutting down/);
  });
});

describe('postbox token', () => {
  const token = async (...flags: string[]) => {
    const p = postbox('token', '--secret', SECRET, ...flags);
    const code = await p.exited;
    return { code, out: p.lines.join('\n'), err: p.stderr() };
  };

  it(
    'without --ttl-hours prints a token that expires in 24 hours; --no-expiry only with a loud warning',
    { timeout: TEST_MS },
    async () => {
      const before = Date.now();
      const day = await token('--user', 'alice', '--device', 'd1');
      expect(day.code).toBe(0);
      const exp = verifyToken(SECRET, day.out)?.expiresAt;
      expect(exp).toBeGreaterThanOrEqual(before + 24 * 3600_000);
      expect(exp).toBeLessThanOrEqual(Date.now() + 24 * 3600_000);
      const hour = verifyToken(
        SECRET,
        (await token('--user', 'alice', '--device', 'd1', '--ttl-hours', '1')).out,
      );
      expect(hour?.expiresAt).toBeLessThanOrEqual(Date.now() + 3600_000);
      const forever = await token('--user', 'alice', '--device', 'd1', '--no-expiry');
      expect(verifyToken(SECRET, forever.out)).toEqual({ user: 'alice', device: 'd1' });
      expect(forever.err).toMatch(/NEVER EXPIRES/);
      for (const flags of [
        ['--ttl-hours', '0'],
        ['--ttl-hours', '1', '--no-expiry'],
      ]) {
        expect((await token('--user', 'alice', '--device', 'd1', ...flags)).code).toBe(2);
      }
    },
  );

  it('refuses a user or device id that breaks the id rule', { timeout: TEST_MS }, async () => {
    for (const [user, device] of [
      ['#g1', 'd1'],
      ['al ice', 'd1'],
      ['alice', 'd/1'],
      ['alice', 'x'.repeat(65)],
    ]) {
      const r = await token('--user', user!, '--device', device!);
      expect(r.code, `${user} ${device}`).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/not a valid (user|device) id/);
    }
  });
});

describe('postbox chat', () => {
  it(
    'two terminals chat with ✓ / ✓✓ / read ticks shown live; a line typed while the server is down goes out when it returns; a chat killed and started again draws its history from the store',
    { timeout: 60_000 },
    async () => {
      const dir = tempDir();
      const data = join(dir, 'server.sqlite');
      let server = await serve(data, '--secret', SECRET, '--heartbeat-ms', '2000');
      const chat = (me: string, peer: string) =>
        postbox(
          'chat',
          '--server',
          server.url,
          '--as',
          me,
          '--to',
          peer,
          '--secret',
          SECRET,
          '--store',
          join(dir, `${me}.sqlite`),
        );
      const alice = chat('alice', 'bob');
      const bob = chat('bob', 'alice');
      await until(
        'both online',
        () => printed(alice, '[online as alice')() && printed(bob, '[online as bob')(),
      );

      // Commands are never sent as messages, a typo neither; `//` sends a leading slash.
      alice.proc.stdin.write('/help\n/hepl\n//slash\n');
      await until('help shown', printed(alice, '/approve CODE'));
      await until('typo caught', printed(alice, '[unknown command /hepl'));
      await until('bob sees the slash line', printed(bob, 'alice: /slash'));
      alice.proc.stdin.write('hello bob\n');
      await until('bob sees it', printed(bob, 'alice: hello bob'));
      await until('alice sees ✓', printed(alice, '✓  "hello bob"'));
      // Bob has the chat on screen, so it is read at once: alice's tick goes to read.
      await until('alice sees read', printed(alice, '✓✓ (read)  "hello bob"'));

      // The server goes away; alice keeps typing; the line waits in her SQLite outbox.
      server.p.proc.kill('SIGTERM');
      expect(await server.p.exited).toBe(0);
      await until('alice offline', printed(alice, '[offline:'));
      alice.proc.stdin.write('sent while the server was down\n');
      await sleep(300);
      expect(printed(bob, 'sent while the server was down')()).toBe(false);

      server = await serve(data, '--secret', SECRET, '--heartbeat-ms', '2000', '--port', String(server.port));
      await until('bob gets the queued line', printed(bob, 'alice: sent while the server was down'), 40_000);
      await until('alice sees it read', printed(alice, '✓✓ (read)  "sent while the server was down"'));
      expect(bob.lines.filter((l) => l.includes('alice: hello bob'))).toHaveLength(1);
      expect(bob.lines.some((l) => l.includes('/help') || l.includes('/hepl'))).toBe(false);
      // One line when the server went and one when it came back, however many retries between.
      expect(alice.lines.filter((l) => l.includes('[offline:'))).toHaveLength(1);
      expect(printed(alice, '[back online]')()).toBe(true);

      alice.proc.stdin.end('/quit\n');
      expect(await alice.exited).toBe(0);
      // kill -9 bob's chat and start it again on its store: it draws the conversation from the
      // store at start (the server has nothing left to send it), with alice's lines once each.
      bob.proc.kill('SIGKILL');
      await bob.exited;
      const again = chat('bob', 'alice');
      await until('history drawn', printed(again, '[last 3 messages with alice]'));
      await until('online again', printed(again, '[online as bob'));
      expect(again.lines.filter((l) => l.includes('alice: hello bob'))).toHaveLength(1);
      expect(again.lines.filter((l) => l.includes('alice: sent while the server was down'))).toHaveLength(1);
      again.proc.stdin.end('/quit\n');
      expect(await again.exited).toBe(0);
    },
  );
});
