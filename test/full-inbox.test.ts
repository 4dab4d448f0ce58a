// A full inbox does not silence the others (issue 22, docs/security.md "A full member does not
// silence a group"): a message skips a recipient device whose inbox is at its quota, is acked and
// delivered to everyone else, and the full device's app is told what it missed, with the reason
// `inbox_full`, as soon as it connects.
import { afterEach, describe, expect, it } from 'vitest';
import type { GapEvent } from '../src/client/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { SECRET, makeWorld, settled, text, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** Far longer than any test waits: a gap that comes, came because the server said so. */
const NEVER = { gapTimeoutMs: 3_600_000 };

/** What a device's app was shown: message bodies, then gaps. */
function shown(d: TestDevice): string[] {
  return [
    ...d.messages.map((m) => `msg ${new TextDecoder().decode(m.body)}`),
    ...(d.gaps as GapEvent[]).map((g) => `gap ${g.conv} ${g.fromSeq}-${g.toSeq} ${g.reason}`),
  ];
}

describe('a full inbox does not silence the others', () => {
  it('a group message reaches every member with room; the full member is told inbox_full for what it missed', async () => {
    world = await makeWorld({ openStore: () => memoryServerStore({ quotas: { inboxEntries: 4 } }) });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.server.registerDevice('carol', 'phone'); // away: her inbox fills
    const g = await settled(world, alice.client.createGroup('team', ['bob', 'carol']));
    const sent: string[] = [];
    // One at a time, so that bob acks each before the next (his inbox has the same quota).
    for (let i = 1; i <= 5; i++) {
      sent.push(await alice.client.sendToGroup(g, text(`m${i}`)));
      await world.advance(200);
    }
    // Nobody is refused for carol's sake: every message is sent (and delivered to bob).
    expect(sent.map((id) => alice.statusOf(id))).not.toContain('failed');
    expect(bob.messages.map((m) => new TextDecoder().decode(m.body))).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    // carol held the group event and three messages; the last two skipped her.
    const carol = await world.device('carol', 'phone', { client: NEVER });
    await world.advance(1000);
    expect(shown(carol)).toEqual(['msg m1', 'msg m2', 'msg m3', `gap ${g} 4-5 inbox_full`]);
    // Having drained her inbox, she gets the next one.
    await alice.client.sendToGroup(g, text('m6'));
    await world.advance(1000);
    expect(shown(carol)).toContain('msg m6');
    expect(alice.errors).toEqual([]);
  });

  it("a 1:1 message reaches the recipient's devices with room; a full one does not block them, and is told", async () => {
    world = await makeWorld({ openStore: () => memoryServerStore({ quotas: { inboxEntries: 2 } }) });
    const alice = await world.device('alice');
    const phone = await world.device('bob', 'phone');
    await world.server.registerDevice('bob', 'tablet'); // abandoned in a drawer
    const ids: string[] = [];
    for (let i = 1; i <= 4; i++) {
      ids.push(await alice.client.send('bob', text(`m${i}`)));
      await world.advance(200); // the phone acks each before the next
    }
    expect(ids.map((id) => alice.statusOf(id))).toEqual(['delivered', 'delivered', 'delivered', 'delivered']);
    expect(phone.messages.map((m) => new TextDecoder().decode(m.body))).toEqual(['m1', 'm2', 'm3', 'm4']);
    const tablet = await world.device('bob', 'tablet', { client: NEVER });
    await world.advance(1000);
    expect(shown(tablet)).toEqual(['msg m1', 'msg m2', 'gap alice 3-4 inbox_full']);
  });

  it('on the wire: a version-3 session gets the notice as gap why f; a version-2 session never does, the server deletes it for it', async () => {
    world = await makeWorld({ openStore: () => memoryServerStore({ quotas: { inboxEntries: 1 } }) });
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone');
    await alice.client.send('bob', text('one')); // the phone is full with it
    await world.advance(200);
    await world.server.registerDevice('bob', 'tablet');
    await alice.client.send('bob', text('two')); // the tablet takes it; the phone is skipped
    await world.advance(200);
    const session = async (name: string, v: [number, number]) => {
      const raw = await world!.raw(name);
      raw.send({ t: 'hello', v, cred: `bob/phone:${SECRET}` });
      await world!.advance(100);
      raw.conn.close(1000, 'done');
      await world!.advance(100);
      return raw.frames.filter((f) => f.t === 'msg' || f.t === 'gap');
    };
    const v3 = await session('v3', [1, 3]);
    expect(v3.map((f) => f.t)).toEqual(['msg', 'gap']);
    expect(v3[1]).toMatchObject({ why: 'f', s: [['alice', 'phone', 'bob', 2, 2]] });
    // Not acked by that session: a version-2 session finds it, and the server deletes it instead.
    expect((await session('v2', [1, 2])).map((f) => f.t)).toEqual(['msg']);
    expect((await session('v2 again', [1, 2])).map((f) => f.t)).toEqual(['msg']);
    expect((await session('v3 again', [1, 3])).map((f) => f.t)).toEqual(['msg']);
  });
});
