// Crash tests with real processes: a server on SQLite killed with SIGKILL under load and
// restarted on the same file, and a client process killed mid-send and restarted on its SQLite
// store. Each round picks a different kill moment (printed, so a failure can be related to it).
// The durability point of send(): a client killed right after send() resolved, or while it was
// still running, and started again on the same SQLite file.
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { startServe, type ServeHandle } from '../src/cli/serve.js';
import { createClient, type ReceivedMessage } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { killAll, run, startServerProcess } from './fixtures/proc.js';
import { sleep, tempDirs } from './fixtures/util.js';

const dirs = tempDirs('crash');
const tempDir = () => dirs.make();
// A failed round must not leave its server or load processes running.
afterEach(() => killAll());
afterAll(() => dirs.removeAll());
const between = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo));

/** A `postbox serve` in this process on `dir`, and bob (memory store) recording what he is shown. */
async function serverWithBob(dir: string): Promise<{
  server: ServeHandle;
  bob: ReturnType<typeof createClient>;
  received: ReceivedMessage[];
}> {
  const server = await startServe({
    port: 0,
    host: '127.0.0.1',
    data: join(dir, 'server.sqlite'),
    path: '/postbox',
    insecureDevAuth: true,
    retentionDays: 30,
    maxBodyBytes: 65536,
    maxFrameBytes: 262144,
    maxConnectionsPerAddress: 256,
    heartbeatMs: 2000,
    linking: 'approval',
    maxGroupMembers: 1024,
    presence: 'contacts',
    logLevel: 'error',
  });
  const received: ReceivedMessage[] = [];
  const bob = createClient({
    transport: websocketClientTransport({ url: server.url }),
    store: memoryClientStore(),
    credentials: 'bob/d',
  });
  bob.on('message', (m) => received.push(m));
  await server.engine.registerDevice('bob', 'd');
  return { server, bob, received };
}

/** Polls until `done()` or `ms` passed. */
async function until(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await sleep(50);
}

type OutboxView = Array<{ id: string; seq: number; body: string }>;

/** Starts a client again on `storeFile` and waits until its outbox is acked; returns its messages. */
async function drain(url: string, storeFile: string, user: string): Promise<OutboxView> {
  const p = run(['test/fixtures/send-once.mjs', url, storeFile, user, 'bob', 'drain']);
  return JSON.parse((await p.waitFor('outbox ', 60_000)).slice(7)) as OutboxView;
}

describe('kill -9 with real processes', () => {
  for (const round of [1, 2, 3]) {
    it(`every message a client saw acked is delivered exactly once, in order, after the server is SIGKILLed (round ${round})`, async () => {
      const data = join(tempDir(), 'server.sqlite');
      let server = await startServerProcess(data);
      const gen = run(['test/fixtures/loadgen.mjs', server.url, '5']);
      await gen.waitFor('online');
      // CRASH_KILL_MS=N replays a failing round's kill moment (printed below).
      const killAfter = Number(process.env.CRASH_KILL_MS) || between(50, 1500);
      await sleep(killAfter);
      const before = JSON.parse(
        (gen.lines.filter((l) => l.startsWith('progress ')).at(-1) ?? 'progress {}').slice(9),
      ) as { acked?: number };
      server.p.proc.kill('SIGKILL');
      await server.p.exited;
      await sleep(between(50, 400));
      server = await startServerProcess(data, server.port);
      await sleep(1500);
      gen.proc.stdin.write('stop\n');
      const result = JSON.parse((await gen.waitFor('result ', 70_000)).slice(7)) as Record<
        string,
        number | boolean
      >;
      console.log(
        `round ${round}: killed after ${killAfter} ms with ${before.acked ?? 0} acked; ${JSON.stringify(result)}`,
      );
      expect(result.ackedBeforeEnd as number).toBeGreaterThan(100);
      expect(result).toMatchObject({
        lostAcked: 0,
        undelivered: 0,
        duplicates: 0,
        outOfOrder: 0,
        settled: true,
      });
      server.p.proc.kill('SIGTERM');
      expect(await server.p.exited).toBe(0);
    }, 90_000);
  }

  it('a client process killed mid-send resumes its outbox from SQLite: nothing lost, nothing doubled, in order (3 kills)', async () => {
    const dir = tempDir();
    const { server, bob, received } = await serverWithBob(dir);
    const storeFile = join(dir, 'alice.sqlite');
    const kills: number[] = [];
    let alice = run(['test/fixtures/sender.mjs', server.url, storeFile, 'alice', 'bob']);
    for (let k = 0; k < 3; k++) {
      await alice.waitFor('sent ');
      const at = between(100, 700);
      await sleep(at);
      kills.push(at);
      alice.proc.kill('SIGKILL');
      await alice.exited;
      alice = run(['test/fixtures/sender.mjs', server.url, storeFile, 'alice', 'bob']);
    }
    await alice.waitFor('sent ');
    alice.proc.stdin.write('finish\n');
    const done = JSON.parse((await alice.waitFor('done ', 60_000)).slice(5)) as {
      ids: string[];
      seqs: number[];
    };
    const deadline = Date.now() + 30_000;
    while (received.length < done.ids.length && Date.now() < deadline) await sleep(50);
    await sleep(300);
    console.log(
      `client kills after ${kills.join(', ')} ms; outbox ${done.ids.length}, received ${received.length}`,
    );
    expect(done.ids.length).toBeGreaterThan(50);
    // The sequence never reused or skipped a number across the kills.
    expect(done.seqs).toEqual(done.ids.map((_, i) => i + 1));
    // Every message in the outbox arrived exactly once, in the order sent.
    expect(received.map((m) => m.id)).toEqual(done.ids);
    expect(received.map((m) => m.seq)).toEqual(done.seqs);
    await bob.close();
    await server.close();
  }, 120_000);
});

describe('send() resolves at the durability point (kill -9 of the client process)', () => {
  for (const when of ['starting', 'online', 'offline'] as const) {
    it(`a message whose send() resolved survives a SIGKILL right after, and is delivered exactly once (sent ${when})`, async () => {
      const dir = tempDir();
      const { server, bob, received } = await serverWithBob(dir);
      const storeFile = join(dir, 'alice.sqlite');
      const body = `resolved then killed (${when})`;
      const child = run([
        'test/fixtures/send-once.mjs',
        server.url,
        storeFile,
        'alice',
        'bob',
        'resolved',
        body,
        when,
      ]);
      const id = (await child.waitFor('id ')).slice(3);
      await child.exited;
      expect(child.proc.signalCode).toBe('SIGKILL');
      const outbox = await drain(server.url, storeFile, 'alice');
      expect(outbox).toEqual([{ id, seq: 1, body }]);
      await until(() => received.length > 0, 30_000);
      await sleep(300); // room for a duplicate to show up
      expect(received.map((m) => [m.id, m.seq, new TextDecoder().decode(m.body)])).toEqual([[id, 1, body]]);
      await bob.close();
      await server.close();
    }, 90_000);
  }

  it('a client killed while send() runs has either never stored the message (never delivered) or delivered it exactly once', async () => {
    const dir = tempDir();
    const { server, bob, received } = await serverWithBob(dir);
    const outcomes: string[] = [];
    // The kill lands after a growing number of microtask turns: before, during and after the commit.
    for (const [round, turns] of [0, 4, 8, 9, 10, 12, 24].entries()) {
      const user = `alice${round}`;
      const storeFile = join(dir, `${user}.sqlite`);
      const body = `killed after ${turns} turns`;
      const child = run([
        'test/fixtures/send-once.mjs',
        server.url,
        storeFile,
        user,
        'bob',
        'called',
        body,
        String(turns),
      ]);
      await child.waitFor('calling');
      await child.exited;
      expect(child.proc.signalCode).toBe('SIGKILL');
      const outbox = await drain(server.url, storeFile, user);
      const mine = () => received.filter((m) => m.from === user);
      if (outbox.length === 1) {
        // Stored whole (id, number, body) and delivered once.
        expect(outbox[0]).toMatchObject({ seq: 1, body });
        await until(() => mine().length > 0, 30_000);
        await sleep(300);
        expect(mine().map((m) => [m.id, m.seq, new TextDecoder().decode(m.body)])).toEqual([
          [outbox[0]!.id, 1, body],
        ]);
        outcomes.push(`${turns}: stored, delivered once`);
      } else {
        expect(outbox).toEqual([]);
        await sleep(500);
        expect(mine()).toEqual([]);
        outcomes.push(`${turns}: never stored, never delivered`);
      }
    }
    console.log(`kill while send() runs: ${outcomes.join('; ')}`);
    await bob.close();
    await server.close();
  }, 180_000);
});
