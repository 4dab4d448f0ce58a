// PostgreSQL going away under a real `postbox serve --store postgres://…` (issue 15): a TCP relay
// between the node and the database resets its connections (a database restart, failover,
// pgbouncer restart or firewall) or black-holes them (a partition: packets vanish), idle or with
// commits in flight. The node must stay up, refuse sends with 1013 (try again later) instead of
// acking them, say 503 on /readyz while the database is away, and recover by itself once it is
// back; clients retry, and every message a client saw acked arrives exactly once, in order.
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, expect, it } from 'vitest';
import {
  chatter,
  cleanUp,
  eventually,
  expectDeliveredOnce,
  relayTo,
  serve,
  type Chatter,
  type ServeProc,
} from './fixtures/outage.js';
import { dropSchema, PG_URL, pgUnreachable, describeWithServices } from './fixtures/services.js';
import type { TcpProxy } from './fixtures/tcp-proxy.js';
import { sleep, until } from './fixtures/util.js';

const reason = await pgUnreachable();
const schema = `pb_outage_${randomBytes(4).toString('hex')}`;
const TITLE = 'postbox serve when PostgreSQL resets or vanishes';
/** Statement timeout of the node under test (its connect timeout is 1 s), so black holes end soon. */
const QUERY_TIMEOUT_MS = 1000;

afterEach(cleanUp);
afterAll(async () => {
  if (!reason) await dropSchema(schema);
});

let users = 0;

/**
 * A node whose database connections all go through a fresh relay, with two new users on it (the
 * tests share the schema) who have exchanged a message, so the pool holds warm connections.
 */
async function setUp(): Promise<{
  node: ServeProc;
  relay: TcpProxy;
  alice: Chatter;
  bob: Chatter;
  bobId: string;
}> {
  const relay = await relayTo(Number(new URL(PG_URL).port || 5432));
  const url = new URL(PG_URL);
  url.port = String(relay.port);
  url.searchParams.set('schema', schema);
  url.searchParams.set('query_timeout', String(QUERY_TIMEOUT_MS));
  url.searchParams.set('connect_timeout', '1');
  const node = await serve(['--store', url.toString()]);
  const n = ++users;
  const [alice, bob] = [chatter(() => node.url, `alice${n}`), chatter(() => node.url, `bob${n}`)];
  await until('both online', () => alice.client.state === 'open' && bob.client.state === 'open');
  await alice.send(`bob${n}`, 'hello');
  await until('hello delivered', () => bob.received.includes('hello'));
  return { node, relay, alice, bob, bobId: `bob${n}` };
}

function expectUp(node: ServeProc): void {
  expect(node.exitCode, `the node exited; stderr: ${node.p.stderr()}`).toBeUndefined();
}

describeWithServices(TITLE, reason, () => {
  const outages = [
    { how: 'reset (a restart: connections cut, new ones refused)', cut: (r: TcpProxy) => r.reset() },
    // The open connections stay open but carry nothing, and new ones hang: only the statement
    // and connect timeouts (1 s each here) end the calls, instead of never.
    { how: 'black-holed (a partition)', cut: (r: TcpProxy) => r.partition() },
  ];
  for (const { how, cut } of outages) {
    it(
      `while the database is ${how}, the node stays up, refuses sends with 1013 and is not ready; once it is back, it recovers by itself and delivers once`,
      { timeout: 60_000 },
      async () => {
        const { node, relay, alice, bob, bobId } = await setUp();
        cut(relay);
        // An idle connection's reset used to kill the process right here.
        await sleep(300);
        expectUp(node);
        const id = await alice.send(bobId, 'during the outage');
        await until('alice told to try again later', () => alice.drops.includes('unavailable'), 10_000);
        await eventually('/readyz 503', () => node.readyz(), 503, 10_000);
        // Clients keep retrying meanwhile; nothing is acked, and the node stays up.
        await sleep(1000);
        expect(alice.status.get(id)).toBe('pending');
        expectUp(node);
        relay.heal();
        await eventually('/readyz 200', () => node.readyz(), 200);
        await until('delivered after recovery', () => bob.received.includes('during the outage'), 20_000);
        await until('acked', () => alice.acked().includes(id));
        expectDeliveredOnce(alice, bob, ['hello', 'during the outage']);
        expectUp(node);
      },
    );
  }

  it(
    'a reset with commits in flight loses and duplicates nothing a client saw acked, and the node never exits',
    { timeout: 60_000 },
    async () => {
      const { node, relay, alice, bob, bobId } = await setUp();
      const bodies: string[] = [];
      for (let i = 0; i < 150; i++) {
        bodies.push(`m${i}`);
        await alice.send(bobId, `m${i}`);
        // Mid-stream: commits are under way on the connections being reset.
        if (i === 40) relay.reset();
        if (i === 80) relay.heal();
        await sleep(10);
      }
      await until('every message acked', () => alice.acked().length === bodies.length + 1, 30_000);
      await until('every message delivered', () => bodies.every((b) => bob.received.includes(b)), 30_000);
      expectDeliveredOnce(alice, bob, ['hello', ...bodies]);
      expect(alice.drops).toContain('unavailable');
      expectUp(node);
      expect(await node.readyz()).toBe(200);
    },
  );
});
