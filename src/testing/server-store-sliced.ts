/**
 * The sliced-append rules of the {@link ServerStore} contract (`slicedAppend` on
 * `StoreCapabilities`): a group message written in slices reaches each member device once, as a
 * whole one would, and calls made between its slices commit. Part of `serverStoreConformance`;
 * the cases run for a subject that declares `slicedAppend`.
 * @internal
 */
import assert from 'node:assert/strict';
import type { AppendInput, DeviceAddress, ServerStore } from '../server/store.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';

const owner: DeviceAddress = { user: 'sol', device: 's1' };
const members = ['sm1', 'sm2', 'sm3', 'sm4', 'sm5', 'sm6'];
const note = (from: DeviceAddress, id: string, to: string, seq: number, group = false): AppendInput => ({
  kind: 'msg',
  from,
  id,
  to,
  seq,
  body: new TextEncoder().encode(id),
  ...(group ? { group: true } : {}),
});

/** The sliced-append cases, for {@link ServerStore} adapters (run by `serverStoreConformance`). */
export function slicedAppendCases(subject: {
  open(): Promise<ServerStore>;
  reopen(store: ServerStore): Promise<ServerStore>;
}): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = storeCaseBuilder(subject, cases);

  test('a group message written in slices reaches every member device once, in order, and a call made between its slices commits', async (h) => {
    const { store } = h;
    for (const u of [owner.user, ...members]) await store.registerDevice({ user: u, device: 'd' }, 1);
    await store.registerDevice(owner, 1);
    const create: AppendInput = {
      kind: 'group',
      from: owner,
      id: 'mk',
      group: '#sliced',
      change: { op: 'create', name: 'S', members },
      maxMembers: 16,
    };
    assert.equal((await store.append([create], 2))[0]?.ok, true);
    // Two messages in one call, each in slices of two entries; a 1:1 message beside them.
    const sliced = store.append(
      [note(owner, 'g1', '#sliced', 1, true), note(owner, 'g2', '#sliced', 2, true)],
      3,
      {
        sliceRows: 2,
      },
    );
    const [beside] = await store.append([note({ user: 'sm1', device: 'd' }, 'x1', 'sm2', 1)], 4);
    assert.equal(beside?.ok, true, 'the call made between slices commits');
    const outs = await sliced;
    for (const out of outs) {
      assert.ok(out.ok && !out.duplicate);
      assert.equal(out.notify.length, members.length + 1, 'every member device and the owner’s other one');
    }
    for (const reopened of [false, true]) {
      const s = reopened ? await h.reopen() : store;
      for (const u of members) {
        const ids = (await s.readInbox({ user: u, device: 'd' }, 0, 100)).flatMap((e) =>
          e.kind === 'msg' && e.from.user === owner.user ? [e.id] : [],
        );
        assert.deepEqual(ids, ['g1', 'g2'], `${u}: each message once, in order`);
      }
    }
    const again = await h.store.append([note(owner, 'g1', '#sliced', 1, true)], 5, { sliceRows: 2 });
    assert.deepEqual(again, [{ ok: true, ts: 3, duplicate: true, notify: [] }]);
  });
  for (const c of cases) c.needs = ['slicedAppend'];
  return cases;
}
