// The append rules every built-in store takes from one planner (src/server/stores/planner.ts):
// refusals, targets, placement under the inbox quotas, consent and taking part. Checked here on
// the rules alone, over a small directory the test writes; the store conformance suites check
// that each store applies the plans. A seeded part draws directories and items at random and
// holds the delivery rule's invariants; PLANNER_SEED=N replays one seed.
import { describe, expect, it } from 'vitest';
import {
  changeTargets,
  directTargets,
  placeMessage,
  planMessage,
  planReceipt,
  tellSender,
  type AppendReads,
} from '../src/server/stores/planner.js';
import type { Groups } from '../src/server/stores/relational.js';
import { resolveQuotas } from '../src/server/quotas.js';
import type { DeviceAddress, MessageInput, ReceiptInput } from '../src/server/store.js';
import { seededRandom } from '../src/util/clock.js';

interface Dev extends DeviceAddress {
  rid: number;
  keyed: boolean;
}

/** A directory: users' devices in registration order, and groups with members and a version. */
function directory(
  devices: Record<string, string[]>,
  groups: Record<string, { ver: number; members: string[] }> = {},
  unkeyed: string[] = [],
): AppendReads<Dev> {
  const of = (user: string): Dev[] =>
    (devices[user] ?? []).map((device, i) => ({
      user,
      device,
      rid: 100 + i,
      keyed: !unkeyed.includes(`${user}/${device}`),
    }));
  return {
    devices: of,
    keyed: (user) => of(user).filter((d) => d.keyed),
    memberVer: (group, user) => (groups[group]?.members.includes(user) ? groups[group].ver : undefined),
    memberDevices: (group) => (groups[group]?.members ?? []).flatMap(of),
  };
}

const names = (ds: readonly DeviceAddress[]): string[] => ds.map((d) => `${d.user}/${d.device}`);
const body = new Uint8Array([1, 2, 3]);
const msg = (from: string, to: string, extra: Partial<MessageInput> = {}): MessageInput => {
  const [user, device] = from.split('/') as [string, string];
  return { kind: 'msg', from: { user, device }, id: 'm1', to, seq: 1, body, ...extra };
};
const receipt = (from: string, to: string): ReceiptInput => {
  const [user, device] = from.split('/') as [string, string];
  return { kind: 'receipt', from: { user, device }, id: 'r1', to, status: 'read', ids: ['m1', 'm2'] };
};
const envelope = (user: string, device: string, rid: number) => ({
  user,
  device,
  rid,
  body: new TextEncoder().encode(`${user}/${device}`),
});

const reads = directory(
  { alice: ['a1', 'a2'], bob: ['b1', 'b2'], carol: ['c1'] },
  { g: { ver: 7, members: ['alice', 'bob'] } },
  ['bob/b2'],
);

describe('append planner: who a message goes to', () => {
  it('a 1:1 message goes to every device of its recipient, then the sender user’s other devices, never the sending device', () => {
    const plan = planMessage(msg('alice/a1', 'bob'), reads);
    expect(plan.ok && names(plan.targets)).toEqual(['bob/b1', 'bob/b2', 'alice/a2']);
    expect(plan.ok && [plan.consent, plan.ver]).toEqual([true, null]);
  });

  it('a note to self goes to the user’s other devices once each, and consents to no one', () => {
    const plan = planMessage(msg('alice/a1', 'alice'), reads);
    expect(plan.ok && names(plan.targets)).toEqual(['alice/a2']);
    expect(plan.ok && plan.consent).toBe(false);
  });

  it('a message or receipt to a user without devices is refused as unknown_recipient', () => {
    expect(planMessage(msg('alice/a1', 'dave'), reads)).toEqual({ ok: false, code: 'unknown_recipient' });
    let counted = 0;
    const refused = planReceipt(receipt('alice/a1', 'dave'), reads, () => (counted++, ['m1']));
    expect(refused).toEqual({ ok: false, code: 'unknown_recipient' });
    expect(counted).toBe(0); // nothing is read for a refused receipt
  });

  it('a group message goes to every member device but the sender’s, at the group’s version; a non-member’s is refused', () => {
    const plan = planMessage(msg('bob/b2', 'g', { group: true }), reads);
    expect(plan.ok && names(plan.targets)).toEqual(['alice/a1', 'alice/a2', 'bob/b1']);
    expect(plan.ok && [plan.ver, plan.consent]).toEqual([7, false]);
    expect(planMessage(msg('carol/c1', 'g', { group: true }), reads)).toEqual({
      ok: false,
      code: 'not_member',
    });
    expect(planMessage(msg('alice/a1', 'nope', { group: true }), reads)).toEqual({
      ok: false,
      code: 'not_member',
    });
  });

  it('an end-to-end encrypted message carries one envelope per keyed device, each target with its own body', () => {
    const envelopes = [envelope('alice', 'a2', 101), envelope('bob', 'b1', 100)];
    const plan = planMessage(msg('alice/a1', 'bob', { envelopes }), reads);
    expect(plan.ok && names(plan.targets)).toEqual(['bob/b1', 'alice/a2']); // directory order
    expect(plan.ok && plan.bodies!.map((b) => new TextDecoder().decode(b))).toEqual(['bob/b1', 'alice/a2']);
    expect(plan.ok && plan.consent).toBe(true);
  });

  it('a device list that misses, adds or has stale devices is refused with the devices named; a group’s is forbidden', () => {
    const missing = planMessage(msg('alice/a1', 'bob', { envelopes: [envelope('bob', 'b1', 100)] }), reads);
    expect(missing).toMatchObject({
      ok: false,
      code: 'mismatched_devices',
      devices: { missing: [{ user: 'alice' }] },
    });
    const extra = [envelope('alice', 'a2', 101), envelope('bob', 'b1', 100), envelope('bob', 'b2', 101)];
    expect(planMessage(msg('alice/a1', 'bob', { envelopes: extra }), reads)).toMatchObject({
      code: 'mismatched_devices',
      devices: { extra: [{ user: 'bob', device: 'b2' }] },
    });
    const stale = [envelope('alice', 'a2', 101), envelope('bob', 'b1', 999)];
    expect(planMessage(msg('alice/a1', 'bob', { envelopes: stale }), reads)).toMatchObject({
      code: 'stale_devices',
      devices: { stale: [{ user: 'bob', device: 'b1' }] },
    });
    const group = planMessage(msg('alice/a1', 'g', { group: true, envelopes: [] }), reads);
    expect(group).toEqual({ ok: false, code: 'forbidden' });
  });

  it('a read receipt whose ids do not count writes no status; one whose do goes where a 1:1 message would', () => {
    expect(planReceipt(receipt('bob/b1', 'alice'), reads, () => [])).toEqual({
      ok: true,
      ids: [],
      targets: [],
    });
    const plan = planReceipt(receipt('bob/b1', 'alice'), reads, () => ['m2']);
    expect(plan.ok && [plan.ids, names(plan.targets)]).toEqual([['m2'], ['alice/a1', 'alice/a2', 'bob/b2']]);
  });
});

describe('append planner: placement under the inbox quotas', () => {
  const quotas = resolveQuotas({ inboxEntries: 10 }, 'test');
  const fullOnly =
    (...full: string[]) =>
    (d: DeviceAddress) => ({ entries: full.includes(`${d.user}/${d.device}`) ? 10 : 0, bytes: 0 });

  it('a message in a sequence skips a full device while a recipient device has room, keeping bodies in step', () => {
    const keyed = directory({ alice: ['a1', 'a2'], bob: ['b1', 'b2'] });
    const envelopes = [envelope('alice', 'a2', 101), envelope('bob', 'b1', 100), envelope('bob', 'b2', 101)];
    const item = msg('alice/a1', 'bob', { envelopes });
    const plan = planMessage(item, keyed);
    if (!plan.ok) throw new Error('planned');
    const placed = placeMessage(quotas, item, plan, fullOnly('bob/b1'));
    expect(placed.ok && [names(placed.targets), names(placed.skipped)]).toEqual([
      ['bob/b2', 'alice/a2'],
      ['bob/b1'],
    ]);
    expect(placed.ok && placed.bodies!.map((b) => new TextDecoder().decode(b))).toEqual([
      'bob/b2',
      'alice/a2',
    ]);
  });

  it('a message is refused with inbox_full when none of its recipient devices has room, even if the sender’s have', () => {
    const item = msg('alice/a1', 'bob');
    const plan = planMessage(item, reads);
    if (!plan.ok) throw new Error('planned');
    expect(placeMessage(quotas, item, plan, fullOnly('bob/b1', 'bob/b2'))).toEqual({
      ok: false,
      code: 'inbox_full',
    });
  });

  it('a message in no sequence, and a read receipt, go everywhere or are refused', () => {
    const item = msg('alice/a1', 'bob', { seq: 0 });
    const plan = planMessage(item, reads);
    if (!plan.ok) throw new Error('planned');
    expect(placeMessage(quotas, item, plan, fullOnly('alice/a2'))).toMatchObject({ code: 'inbox_full' });
    const r = receipt('bob/b1', 'alice');
    const rp = planReceipt(r, reads, () => ['m1']);
    if (!rp.ok) throw new Error('planned');
    expect(placeMessage(quotas, r, rp, fullOnly('bob/b2'))).toMatchObject({ code: 'inbox_full' });
    expect(placeMessage(quotas, r, rp, fullOnly())).toMatchObject({ ok: true, skipped: [] });
  });
});

describe('append planner: who a membership change goes to', () => {
  it('every member device after it, the added members’ with the full form, then the removed users’ devices', () => {
    const dir = directory({ alice: ['a1', 'a2'], bob: ['b1'], carol: ['c1', 'c2'], dave: ['d1'] });
    // alice and carol are members after the change (carol added); bob and dave were removed.
    const members = [...dir.devices('alice'), ...dir.devices('carol')];
    const { targets, full } = changeTargets(
      { joined: ['carol'], removed: ['bob', 'dave'] },
      members,
      dir.devices,
    );
    expect(targets.map((t) => `${t.device.user}/${t.device.device}${t.full ? ' full' : ''}`)).toEqual([
      'alice/a1',
      'alice/a2',
      'carol/c1 full',
      'carol/c2 full',
      'bob/b1',
      'dave/d1',
    ]);
    expect(full).toBe(2);
  });
});

describe('statuses of entries leaving an inbox (acked or expired)', () => {
  it('the first entry of a recipient user tells the sender once; own copies tell no one and are not recorded', () => {
    const told = new Set<string>();
    const asked: string[] = [];
    const first = (id: string, user: string) => () => {
      asked.push(`${id}/${user}`);
      return !told.has(`${id}/${user}`) && (told.add(`${id}/${user}`), true);
    };
    const statuses: Groups = new Map();
    // bob's two devices ack m1, alice's other device acks her own m1, carol acks m1 and m2.
    for (const [id, owner] of [
      ['m1', 'bob'],
      ['m1', 'bob'],
      ['m1', 'alice'],
      ['m1', 'carol'],
      ['m2', 'carol'],
    ] as const) {
      tellSender(statuses, { from: 'alice', id }, owner, first(id, owner));
    }
    expect([...statuses.values()]).toEqual([
      { user: 'alice', by: 'bob', ids: ['m1'] },
      { user: 'alice', by: 'carol', ids: ['m1', 'm2'] },
    ]);
    expect(asked).not.toContain('m1/alice'); // the sender's own copy is never recorded as told
  });
});

const SEEDS = process.env.PLANNER_SEED
  ? [Number(process.env.PLANNER_SEED)]
  : Array.from({ length: 30 }, (_, i) => i + 1);

describe('append planner: the delivery rule under random directories', () => {
  for (const seed of SEEDS) {
    it(`a 1:1 message reaches every device of both users but the sender's, each once, recipient first (seed ${seed})`, () => {
      const r = seededRandom(seed);
      const users = ['u0', 'u1', 'u2', 'u3'];
      const devices: Record<string, string[]> = {};
      for (const u of users) devices[u] = Array.from({ length: Math.floor(r() * 4) }, (_, i) => `d${i}`);
      const dir = directory(devices);
      for (let n = 0; n < 50; n++) {
        const fromUser = users[Math.floor(r() * users.length)]!;
        const to = users[Math.floor(r() * users.length)]!;
        const from = { user: fromUser, device: devices[fromUser]![0] ?? 'gone' };
        const plan = planMessage({ kind: 'msg', from, id: `m${n}`, to, seq: 1, body }, dir);
        if (devices[to]!.length === 0) {
          expect(plan).toEqual({ ok: false, code: 'unknown_recipient' });
          continue;
        }
        if (!plan.ok) throw new Error(`seed ${seed}: refused ${plan.code}`);
        const want = [
          ...new Set([
            ...devices[to]!.map((d) => `${to}/${d}`),
            ...devices[fromUser]!.map((d) => `${fromUser}/${d}`),
          ]),
        ];
        expect(names(plan.targets)).toEqual(want.filter((k) => k !== `${from.user}/${from.device}`));
        expect(names(directTargets({ from, to }, dir.devices(to), dir.devices(fromUser)))).toEqual(
          names(plan.targets),
        );
      }
    });
  }
});
