// The store kit (postbox/server/store-kit) as a store of one's own meets it: from the public
// module only. `batchReads` lists what planning a batch asks of AppendReads, so a store whose
// reads are asynchronous can load it all before planning; the seeded part draws directories and
// batches at random and fails if the planner ever asks for a read the list left out (a store
// that loaded only the list would then answer wrongly). STORE_KIT_SEED=N replays one seed.
import { describe, expect, it } from 'vitest';
import {
  batchReads,
  planMessage,
  planReceipt,
  receiptIds,
  type AppendReads,
} from '../src/server/store-kit.js';
import type { AppendInput, DeviceAddress, DeviceEnvelope } from '../src/server/store.js';
import { seededRandom, type Random } from '../src/util/clock.js';

interface Dev extends DeviceAddress {
  rid: number;
}

const body = new Uint8Array([7]);
const pick = <T>(r: Random, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

/** A random directory, and its reads recording every question asked. */
function recordingDirectory(r: Random) {
  const users = ['u0', 'u1', 'u2', 'u3', 'u4'];
  const devices = new Map<string, Dev[]>();
  for (const user of users) {
    const n = Math.floor(r() * 3);
    devices.set(
      user,
      Array.from({ length: n }, (_, i) => ({ user, device: `d${i}`, rid: 100 + i })),
    );
  }
  const groups = new Map<string, { ver: number; members: string[] }>();
  for (const g of ['#g0', '#g1'])
    groups.set(g, { ver: 1 + Math.floor(r() * 5), members: users.filter(() => r() < 0.5) });
  const asked = {
    devices: new Set<string>(),
    keyed: new Set<string>(),
    groups: new Map<string, Set<string>>(),
  };
  const of = (user: string): Dev[] => devices.get(user) ?? [];
  const reads: AppendReads<Dev> = {
    devices: (user) => (asked.devices.add(user), of(user)),
    keyed: (user) => (asked.keyed.add(user), of(user).filter((d) => d.rid % 2 === 0 || r() < 0.5)),
    memberVer: (group, user) => {
      (asked.groups.get(group) ?? asked.groups.set(group, new Set()).get(group)!).add(user);
      const g = groups.get(group);
      return g?.members.includes(user) ? g.ver : undefined;
    },
    memberDevices: (group) => {
      if (!asked.groups.has(group)) asked.groups.set(group, new Set());
      return (groups.get(group)?.members ?? []).flatMap(of);
    },
  };
  return { users, devices, reads, asked };
}

function randomItem(
  r: Random,
  users: readonly string[],
  devices: Map<string, Dev[]>,
  n: number,
): AppendInput {
  const fromUser = pick(r, users);
  const from = { user: fromUser, device: devices.get(fromUser)?.[0]?.device ?? 'd0' };
  const roll = r();
  if (roll < 0.3) return { kind: 'msg', from, id: `m${n}`, to: pick(r, users), seq: n, body };
  if (roll < 0.5)
    return { kind: 'msg', from, id: `m${n}`, to: pick(r, ['#g0', '#g1']), seq: n, body, group: true };
  if (roll < 0.7) {
    const to = pick(r, users);
    const envelopes: DeviceEnvelope[] = [...(devices.get(to) ?? []), ...(devices.get(fromUser) ?? [])]
      .filter(() => r() < 0.8)
      .map((d) => ({ user: d.user, device: d.device, rid: d.rid, body }));
    const group = r() < 0.1;
    return { kind: 'msg', from, id: `m${n}`, to, seq: n, body, envelopes, ...(group ? { group } : {}) };
  }
  if (roll < 0.9)
    return {
      kind: 'receipt',
      from,
      id: `r${n}`,
      to: pick(r, users),
      status: 'read',
      ids: [`m${n - 1}`, `m${n - 2}`],
    };
  return {
    kind: 'group',
    from,
    id: `g${n}`,
    group: '#g0',
    change: { op: 'leave' },
    maxMembers: 1024,
  } as AppendInput;
}

const SEEDS = process.env.STORE_KIT_SEED
  ? [Number(process.env.STORE_KIT_SEED)]
  : Array.from({ length: 40 }, (_, i) => i + 1);

describe('store kit: batchReads, what to load before planning a batch', () => {
  for (const seed of SEEDS) {
    it(`planning a batch asks for no read batchReads left out (seed ${seed})`, () => {
      const r = seededRandom(seed);
      const dir = recordingDirectory(r);
      const batch = Array.from({ length: 30 }, (_, n) => randomItem(r, dir.users, dir.devices, n));
      const listed = batchReads(batch);
      let planned = 0;
      for (const item of batch) {
        if (item.kind === 'msg') planMessage(item, dir.reads);
        else if (item.kind === 'receipt') {
          planReceipt(item, dir.reads, () =>
            receiptIds(item, [{ id: item.ids[0]!, to: item.from.user, ver: null }], () => undefined),
          );
        } else continue;
        planned++;
      }
      expect(planned, `seed ${seed}: the batch planned nothing`).toBeGreaterThan(0);
      for (const user of dir.asked.devices)
        expect(listed.devices, `seed ${seed}: devices(${user})`).toContain(user);
      for (const user of dir.asked.keyed)
        expect(listed.keyed, `seed ${seed}: keyed(${user})`).toContain(user);
      for (const [group, members] of dir.asked.groups) {
        expect([...listed.groups.keys()], `seed ${seed}: memberDevices(${group})`).toContain(group);
        for (const user of members)
          expect(listed.groups.get(group), `seed ${seed}: memberVer(${group}, ${user})`).toContain(user);
      }
    });
  }

  it('lists nothing a batch does not need: group changes, and a group message with envelopes (refused unread)', () => {
    const from = { user: 'a', device: 'd0' };
    const listed = batchReads([
      { kind: 'group', from, id: 'g1', group: '#g', change: { op: 'leave' }, maxMembers: 8 } as AppendInput,
      { kind: 'msg', from, id: 'm1', to: '#g', seq: 1, body, group: true, envelopes: [] },
    ]);
    expect(listed).toEqual({ devices: new Set(), keyed: new Set(), groups: new Map() });
  });

  it('a 1:1 message asks for both users’ devices, a sealed one for their keyed devices, a group one for the group and its sender', () => {
    const from = { user: 'a', device: 'd0' };
    const listed = batchReads([
      { kind: 'msg', from, id: 'm1', to: 'b', seq: 1, body },
      { kind: 'msg', from, id: 'm2', to: 'c', seq: 2, body, envelopes: [] },
      { kind: 'msg', from, id: 'm3', to: '#g', seq: 1, body, group: true },
      { kind: 'receipt', from, id: 'r1', to: 'd', status: 'read', ids: ['x'] },
    ]);
    expect([...listed.devices].sort()).toEqual(['a', 'b', 'd']);
    expect([...listed.keyed].sort()).toEqual(['a', 'c']);
    expect([...listed.groups]).toEqual([['#g', new Set(['a'])]]);
  });
});
