// Consent for groups (issue 22): nobody is put into a group by a stranger. A user that did not
// consent to the actor gets an invite it accepts or declines; creations and joins are capped.
import { afterEach, describe, expect, it } from 'vitest';
import type { GroupInvite } from '../src/client/invites.js';
import { isPostboxError } from '../src/protocol/index.js';
import { makeWorld, settled, text, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** Records a device's `groupInvite` events. */
function invitesOf(d: TestDevice): Array<{ invite: GroupInvite; state: string }> {
  const seen: Array<{ invite: GroupInvite; state: string }> = [];
  d.client.on('groupInvite', (invite, state) => seen.push({ invite, state }));
  return seen;
}

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return isPostboxError(e) ? e.code : String(e);
  }
};

describe('group consent', () => {
  it('one user cannot add a stranger to a group: the stranger gets an invite, and nothing of the group', async () => {
    world = await makeWorld({ server: { groupConsent: 'related' } });
    const mallory = await world.device('mallory');
    const bob = await world.device('bob');
    const seen = invitesOf(bob);
    const group = await settled(world, mallory.client.createGroup('spam', ['bob']));
    await world.advance(200);
    expect((await world.server.store.group(group))!.members.map((m) => m.user)).toEqual(['mallory']);
    expect(seen.map((s) => [s.invite.group, s.invite.by, s.state])).toEqual([[group, 'mallory', 'pending']]);
    expect(bob.client.group(group)).toBeUndefined();
    // Messages to the group do not reach the invitee; adding again does not repeat the invite.
    await settled(world, mallory.client.sendToGroup(group, text('buy now')));
    await settled(world, mallory.client.addMembers(group, ['bob']));
    await world.advance(200);
    expect(bob.messages).toEqual([]);
    expect(seen).toHaveLength(1);
    expect((await bob.client.groupInvites()).map((i) => i.group)).toEqual([group]);
  });

  it('an invited user joins only by accepting; then every member sees it and its messages flow', async () => {
    world = await makeWorld({ server: { groupConsent: 'related' } });
    const alice = await world.device('alice');
    const carol = await world.device('carol');
    const bob = await world.device('bob');
    const bob2 = await world.device('bob', 'laptop');
    const seen2 = invitesOf(bob2);
    // carol wrote to alice: she consented, and joins at once; bob did not, and is invited.
    await settled(world, carol.client.send('alice', text('hi alice')));
    const group = await settled(world, alice.client.createGroup('trip', ['carol', 'bob']));
    await world.advance(200);
    expect(carol.client.group(group)?.member).toBe(true);
    expect(seen2.map((s) => s.state)).toEqual(['pending']);
    await settled(world, bob.client.acceptGroupInvite(group));
    await world.advance(200);
    const members = (await world.server.store.group(group))!.members.map((m) => m.user);
    expect(members).toEqual(['alice', 'carol', 'bob']);
    for (const d of [alice, carol, bob, bob2])
      expect(d.client.group(group)?.members.map((m) => m.user)).toEqual(members);
    expect(await bob2.client.groupInvites()).toEqual([]);
    const id = await settled(world, alice.client.sendToGroup(group, text('welcome')));
    await world.advance(200);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
    // Accepting made bob a participant: alice may now see his presence (he consented to her).
    expect(await world.server.store.related('alice', 'bob')).toBe(true);
  });

  it('a declined invite is gone on every device of the invitee, and cannot be accepted after', async () => {
    world = await makeWorld({ server: { groupConsent: 'related' } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const bob2 = await world.device('bob', 'laptop');
    const seen2 = invitesOf(bob2);
    const group = await settled(world, alice.client.createGroup('g', ['bob']));
    await world.advance(200);
    await settled(world, bob.client.declineGroupInvite(group));
    await world.advance(200);
    expect(seen2.map((s) => s.state)).toEqual(['pending', 'declined']);
    expect(await bob2.client.groupInvites()).toEqual([]);
    expect(await codeOf(settled(world, bob.client.acceptGroupInvite(group)))).toBe('forbidden');
    expect((await world.server.store.group(group))!.members.map((m) => m.user)).toEqual(['alice']);
  });

  it('accepting an invite one never got is forbidden', async () => {
    world = await makeWorld({ server: { groupConsent: 'related' } });
    const alice = await world.device('alice');
    const mallory = await world.device('mallory');
    await world.device('carol');
    const group = await settled(world, alice.client.createGroup('g', ['carol'])); // carol is invited
    expect(await codeOf(settled(world, mallory.client.acceptGroupInvite(group)))).toBe('forbidden');
    expect((await world.server.store.group(group))!.members.map((m) => m.user)).toEqual(['alice']);
  });

  it("groupConsent 'open' adds at once, 'invite' always invites, and an app rule decides", async () => {
    for (const [consent, expected] of [
      ['open', ['alice', 'bob', 'carol']],
      ['invite', ['alice']],
      [(_actor: string, user: string) => user === 'carol', ['alice', 'carol']],
    ] as const) {
      world = await makeWorld({ server: { groupConsent: consent } });
      const alice = await world.device('alice');
      await world.device('bob');
      await world.device('carol');
      const group = await settled(world, alice.client.createGroup('g', ['bob', 'carol']));
      expect((await world.server.store.group(group))!.members.map((m) => m.user)).toEqual(expected);
      await world.close();
      world = undefined;
    }
  });

  it('the server API is the app and adds directly', async () => {
    world = await makeWorld({ server: { groupConsent: 'related' } });
    await world.device('alice');
    await world.device('bob');
    await world.server.changeGroup(
      { user: 'alice', device: 'phone' },
      '#g',
      { op: 'create', name: 'G', members: ['bob'] },
      'c1',
    );
    expect((await world.server.store.group('#g'))!.members.map((m) => m.user)).toEqual(['alice', 'bob']);
  });
});

describe('group caps', () => {
  it('a user cannot create groups past its creations per hour', async () => {
    world = await makeWorld({ server: { maxGroupCreatesPerHour: 3, groupConsent: 'open' } });
    const mallory = await world.device('mallory');
    await world.device('bob');
    const codes: string[] = [];
    for (let i = 0; i < 5; i++)
      codes.push(await codeOf(settled(world, mallory.client.createGroup(`g${i}`, ['bob']))));
    expect(codes).toEqual(['ok', 'ok', 'ok', 'quota_exceeded', 'quota_exceeded']);
    // The window ends.
    await world.advance(3600_000);
    expect(await codeOf(settled(world, mallory.client.createGroup('later', ['bob'])))).toBe('ok');
  });

  it('a victim cannot be put into more groups per day than its cap, even by users it consented to', async () => {
    world = await makeWorld({ server: { maxGroupJoinsPerDay: 2, groupConsent: 'related' } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const seen = invitesOf(bob);
    await settled(world, bob.client.send('alice', text('hi'))); // bob consented to alice
    const groups: string[] = [];
    for (let i = 0; i < 4; i++) groups.push(await settled(world, alice.client.createGroup(`g${i}`, ['bob'])));
    await world.advance(200);
    const memberOf = await world.server.store.groupsOf('bob');
    expect(memberOf.sort()).toEqual(groups.slice(0, 2).sort());
    // Past the cap, adds became invites.
    expect(seen.map((s) => s.invite.group)).toEqual(groups.slice(2));
  });
});
