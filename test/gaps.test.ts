import { afterEach, describe, expect, it } from 'vitest';
import type { GapEvent } from '../src/client/index.js';
import { makeWorld, settled, text, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const retention = { retentionMs: 60_000, expiryIntervalMs: 10_000 };
/** Far longer than any test waits: a gap that comes, came because the server said so. */
const NEVER = { gapTimeoutMs: 3_600_000 };

/** Messages and gaps of a device in the order the app saw them. */
function watch(d: TestDevice): string[] {
  const log: string[] = [];
  d.client.on('message', (m) => log.push(`msg ${new TextDecoder().decode(m.body)}`));
  d.client.on('gap', (g: GapEvent) => log.push(`gap ${g.conv} ${g.fromSeq}-${g.toSeq} ${g.reason}`));
  return log;
}

describe('gaps that say why', () => {
  it('an expired 1:1 message yields a gap with reason expired at once, not after gapTimeoutMs', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    const bob = await world.device('bob', 'phone', { client: NEVER });
    const log = watch(bob);
    await bob.client.close();
    await alice.client.send('bob', text('one'));
    await world.advance(40_000);
    await alice.client.send('bob', text('two'));
    await alice.client.send('bob', text('three'));
    await world.advance(35_000); // 'one' is past the 60 s retention: expired
    bob.client.start();
    await world.advance(500); // far less than any gap timeout
    expect(log).toEqual(['gap alice 1-1 expired', 'msg two', 'msg three']);
    expect(bob.gaps).toEqual([
      { conv: 'alice', from: 'alice', fromDevice: 'phone', fromSeq: 1, toSeq: 1, reason: 'expired' },
    ]);
  });

  it('an expired group message yields a gap with reason expired at once, not after gapTimeoutMs', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    const bob = await world.device('bob', 'phone', { client: NEVER });
    const log = watch(bob);
    const g = await settled(world, alice.client.createGroup('trip', ['bob']));
    await world.advance(200);
    await bob.client.close();
    await alice.client.sendToGroup(g, text('one'));
    await world.advance(40_000);
    await alice.client.sendToGroup(g, text('two'));
    await world.advance(35_000);
    bob.client.start();
    await world.advance(500);
    // A group never waits for a hole: 'two' shows first, the notice after it says why.
    expect(log).toEqual(['msg two', `gap ${g} 1-1 expired`]);
  });

  it('a message sent after the expiry arrives in order once the notice moved the stream past the dropped ones', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    const bob = await world.device('bob', 'phone', { client: NEVER });
    const log = watch(bob);
    await bob.client.close();
    await alice.client.send('bob', text('one'));
    await alice.client.send('bob', text('two'));
    await world.advance(75_000);
    bob.client.start();
    await world.advance(500);
    expect(log).toEqual(['gap alice 1-2 expired']);
    await alice.client.send('bob', text('three'));
    await world.advance(500);
    expect(log).toEqual(['gap alice 1-2 expired', 'msg three']);
  });

  it('a gap notice survives a server restart and a client restart before it is fetched', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    const bob = await world.device('bob', 'phone', { client: NEVER });
    await bob.client.close();
    await alice.client.send('bob', text('one'));
    await world.advance(40_000);
    await alice.client.send('bob', text('two'));
    await world.advance(35_000);
    await world.restartServer();
    await world.advance(100);
    // The app restarts too: a new client over the same client store.
    await bob.restart();
    await world.advance(3000);
    expect(bob.gaps).toEqual([
      { conv: 'alice', from: 'alice', fromDevice: 'phone', fromSeq: 1, toSeq: 1, reason: 'expired' },
    ]);
    expect(bob.messages.map((m) => new TextDecoder().decode(m.body))).toEqual(['two']);
  });

  it('a hole no one explains is given up after gapTimeoutMs with reason timeout, and past maxHeldPerStream with reason overflow', async () => {
    world = await makeWorld({ server: { heartbeatMs: 60_000 } });
    const bob = await world.device('bob', 'phone', { client: { maxHeldPerStream: 2 } });
    const carol = await world.device('carol');
    const raw = await world.raw('alice-raw');
    await raw.hello('alice', 'raw');
    raw.send({ t: 'send', r: 1, id: 'm1', to: 'bob', seq: 1, b: text('1') });
    raw.send({ t: 'send', r: 2, id: 'm3', to: 'bob', seq: 3, b: text('3') });
    raw.send({ t: 'send', r: 3, id: 'm4', to: 'bob', seq: 4, b: text('4') });
    raw.send({ t: 'send', r: 4, id: 'm5', to: 'bob', seq: 5, b: text('5') }); // a third held one
    raw.send({ t: 'send', r: 5, id: 'c1', to: 'carol', seq: 1, b: text('1') });
    raw.send({ t: 'send', r: 6, id: 'c3', to: 'carol', seq: 3, b: text('3') });
    await world.advance(200);
    expect(bob.gaps).toEqual([
      { conv: 'alice', from: 'alice', fromDevice: 'raw', fromSeq: 2, toSeq: 2, reason: 'overflow' },
    ]);
    expect(carol.gaps).toEqual([]);
    await world.advance(11_000);
    expect(carol.gaps).toEqual([
      { conv: 'alice', from: 'alice', fromDevice: 'raw', fromSeq: 2, toSeq: 2, reason: 'timeout' },
    ]);
  });
});
