// Redis going away under two real `postbox serve --cluster redis://…` nodes (issue 15): a TCP
// relay between the nodes and Redis resets their connections (a Redis restart, a failover) or
// black-holes them (a partition). Redis holds only hints, so the nodes must stay up and keep
// acking sends (the store is fine) and stay ready; devices on one node keep talking; and once
// Redis is back, doorbells ring across nodes again by themselves — within seconds, not after
// the 30 s inbox poll — with every acked message delivered exactly once.
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
import { deleteRedisPrefix, REDIS_URL, redisUnreachable } from './fixtures/redis.js';
import { dropSchema, PG_URL, pgUnreachable, describeWithServices } from './fixtures/services.js';
import type { TcpProxy } from './fixtures/tcp-proxy.js';
import { sleep, until } from './fixtures/util.js';

const reason = (await pgUnreachable()) ?? (await redisUnreachable());
const runId = randomBytes(4).toString('hex');
const schema = `pb_redis_outage_${runId}`;
const TITLE = 'postbox serve nodes when Redis resets or vanishes';
/** Well under the 30 s inbox poll: a doorbell, not the poll, brought the message. */
const DOORBELL_MS = 15_000;

afterEach(cleanUp);
afterAll(async () => {
  if (reason) return;
  await dropSchema(schema);
  await deleteRedisPrefix(`pbredisout-${runId}`);
});

/** Two nodes over one schema whose Redis connections go through a fresh relay. */
async function twoNodes(tag: string): Promise<{ a: ServeProc; b: ServeProc; proxy: TcpProxy }> {
  const proxy = await relayTo(Number(new URL(REDIS_URL).port || 6379));
  const redis = new URL(REDIS_URL);
  redis.port = String(proxy.port);
  redis.searchParams.set('prefix', `pbredisout-${runId}-${tag}:`);
  const node = (id: string) =>
    serve([
      '--store',
      `${PG_URL}?schema=${schema}`,
      '--cluster',
      redis.toString(),
      '--node-id',
      id,
      // Heartbeats every 4 s; an outage of a few seconds leaves the nodes' liveness keys alive,
      // so nothing re-registers every device wholesale: what failed meanwhile must be repaired.
      '--cluster-ttl-ms',
      '12000',
    ]);
  const [a, b] = await Promise.all([node(`${tag}-a`), node(`${tag}-b`)]);
  return { a, b, proxy };
}

/** `alice` on node a, `bob` on node b (names unique per test: the tests share the schema). */
async function acrossNodes(tag: string, a: ServeProc, b: ServeProc): Promise<[Chatter, Chatter]> {
  const alice = chatter(() => a.url, `alice-${tag}`);
  const bob = chatter(() => b.url, `bob-${tag}`);
  await until('both online', () => alice.client.state === 'open' && bob.client.state === 'open');
  await alice.send(`bob-${tag}`, 'hello');
  await until('hello rang across nodes', () => bob.received.includes('hello'), DOORBELL_MS);
  return [alice, bob];
}

/**
 * Sends `text #n` from one node to a device on the other every 250 ms until one arrives (a
 * doorbell lost while the nodes were still reconnecting is a hint lost, not a message); fails
 * after {@link DOORBELL_MS}. Resolves with the bodies sent.
 */
async function talkUntilRung(from: Chatter, to: Chatter, user: string, text: string): Promise<string[]> {
  const sent: string[] = [];
  const start = Date.now();
  while (!to.received.some((b) => sent.includes(b))) {
    if (Date.now() - start > DOORBELL_MS) throw new Error(`${user} not rung within ${DOORBELL_MS} ms`);
    sent.push(`${text} #${sent.length}`);
    await from.send(user, sent.at(-1)!);
    await sleep(250);
  }
  return sent;
}

async function expectUpAndReady(...nodes: ServeProc[]): Promise<void> {
  for (const n of nodes) {
    expect(n.exitCode, `a node exited; stderr: ${n.p.stderr()}`).toBeUndefined();
    expect(await n.readyz()).toBe(200);
  }
}

describeWithServices(TITLE, reason, () => {
  for (const how of ['reset', 'black-holed'] as const) {
    it(
      `while Redis is ${how} the nodes stay up and ready and ack sends; once it is back, doorbells ring across nodes again by themselves`,
      { timeout: 60_000 },
      async () => {
        const tag = how === 'reset' ? 'rst' : 'bh';
        const { a, b, proxy } = await twoNodes(tag);
        const [alice, bob] = await acrossNodes(tag, a, b);
        if (how === 'reset') proxy.reset();
        else proxy.partition();
        const away = await alice.send(`bob-${tag}`, 'while Redis is away');
        await until('acked without Redis', () => alice.acked().includes(away), 10_000);
        // Heartbeats, rings and registrations fail meanwhile (in the black hole: time out).
        await sleep(2500);
        await expectUpAndReady(a, b);
        // A device connecting meanwhile still gets in (its registration gives up after 3 s).
        const carol = chatter(() => b.url, `carol-${tag}`);
        await until('carol online without Redis', () => carol.client.state === 'open', 10_000);
        proxy.heal();
        // Back: once the nodes have reconnected, a send rings bob's node, whose inbox read brings
        // the message sent meanwhile too. Doorbells until then are lost hints: keep talking.
        const after = await talkUntilRung(alice, bob, `bob-${tag}`, 'after Redis is back');
        await until('the one sent meanwhile too', () => bob.received.includes('while Redis is away'));
        // Carol, who connected while Redis was away (her registration failed), is rung too.
        const toCarol = await talkUntilRung(alice, carol, `carol-${tag}`, 'hi carol');
        await until('all acked', () => alice.acked().length === 2 + after.length + toCarol.length);
        await until('all delivered', () => after.every((b) => bob.received.includes(b)), DOORBELL_MS);
        expectDeliveredOnce(alice, bob, ['hello', 'while Redis is away', ...after]);
        expectDeliveredOnce(alice, carol, toCarol);
        await eventually('node a ready', () => a.readyz(), 200);
        await expectUpAndReady(a, b);
      },
    );
  }
});
