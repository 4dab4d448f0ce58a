// client.history() and client.conversations(): what an app reads back from the client store at
// start to rebuild its screens, in the order the `message` events showed it, offline too.
import { afterEach, describe, expect, it } from 'vitest';
import { isPostboxError } from '../src/protocol/index.js';
import { makeWorld, settled, text, untext, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const line = (m: { from: string; outgoing: boolean; body: Uint8Array; status?: string }) =>
  `${m.from}${m.outgoing ? ` (${m.status})` : ''}: ${untext(m.body)}`;

describe('history and conversations', () => {
  it('a conversation reads back newest first, both directions, with statuses; the same offline after a restart', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await alice.client.send('bob', text('hi bob'));
    await world.advance(200);
    await bob.client.markRead('alice');
    await bob.client.send('alice', text('hi alice'));
    await world.advance(200);
    await alice.client.markRead('bob');
    await alice.client.send('bob', text('how are you?'));
    await world.advance(200);
    const expected = ['alice (delivered): how are you?', 'bob: hi alice', 'alice (read): hi bob'];
    expect((await alice.client.history('bob')).map(line)).toEqual(expected);
    expect((await bob.client.history('alice')).map(line)).toEqual([
      'alice: how are you?',
      'bob (read): hi alice',
      'alice: hi bob',
    ]);
    // Offline, after a restart: the store alone, this device's own messages still named.
    await alice.client.close();
    world.net.intercept(() => 'drop');
    await alice.restart();
    expect((await alice.client.history('bob')).map(line)).toEqual(expected);
    const [last] = await alice.client.conversations();
    expect([last?.conv, last?.group, line(last!.last), last?.unread]).toEqual(['bob', false, expected[0], 0]);
  });

  it('paging with the cursor visits every message once; a bad cursor or limit is refused', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    for (let i = 0; i < 7; i++) {
      await alice.client.send('bob', text(`a${i}`));
      await bob.client.send('alice', text(`b${i}`));
    }
    await world.advance(500);
    const all = (await alice.client.history('bob', { limit: 100 })).map((m) => untext(m.body));
    expect(all).toHaveLength(14);
    const paged: string[] = [];
    let before: string | undefined;
    for (;;) {
      const page = await alice.client.history('bob', { before, limit: 3 });
      paged.push(...page.map((m) => untext(m.body)));
      if (page.length < 3) break;
      before = page[page.length - 1]!.cursor;
    }
    expect(paged).toEqual(all);
    const codes = await Promise.all(
      [{ before: 'x' }, { before: '-1' }, { limit: 0 }, { limit: 501 }, { limit: 1.5 }].map((o) =>
        alice.client.history('bob', o).then(
          () => 'resolved',
          (e: unknown) => (isPostboxError(e) ? e.code : String(e)),
        ),
      ),
    );
    expect(codes).toEqual(Array(5).fill('invalid_frame'));
  });

  it('conversations: latest activity first, unread counts fall with markRead, own messages from another device are never unread', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const laptop = await world.device('bob', 'laptop');
    const phone = await world.device('bob', 'phone');
    const carol = await world.device('carol');
    const group = await settled(world, carol.client.createGroup('g', ['bob', 'alice']));
    await world.advance(200);
    await alice.client.send('bob', text('one'));
    await alice.client.send('bob', text('two'));
    await world.advance(200);
    await carol.client.sendToGroup(group, text('to the group'));
    await world.advance(200);
    await phone.client.send('alice', text('from my phone'));
    await world.advance(200);
    const summary = async () =>
      (await laptop.client.conversations()).map((c) => [c.conv, c.group, untext(c.last.body), c.unread]);
    // The copy of bob's own message (sent from his phone) is last in the chat, and not unread.
    expect(await summary()).toEqual([
      ['alice', false, 'from my phone', 2],
      [group, true, 'to the group', 1],
    ]);
    const [copy] = await laptop.client.history('alice', { limit: 1 });
    expect([copy?.from, copy?.fromDevice, copy?.self, copy?.outgoing, copy?.read]).toEqual([
      'bob',
      'phone',
      true,
      false,
      true,
    ]);
    await laptop.client.markRead('alice');
    expect(await summary()).toEqual([
      ['alice', false, 'from my phone', 0],
      [group, true, 'to the group', 1],
    ]);
    // Read on the phone: the laptop's count follows.
    await phone.client.markRead(group);
    await world.advance(300);
    expect((await summary()).map((c) => c[3])).toEqual([0, 0]);
  });
});
