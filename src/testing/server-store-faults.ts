/**
 * The atomicity cases of the {@link ServerStore} conformance suite ("Atomicity"): a store whose
 * backend fails at the Nth write of a call, for every N the call has, leaves nothing half-done,
 * and the resend the engine causes completes the call exactly once. Part of
 * `serverStoreConformance`; they run for a subject with `openWithFaults`.
 */
import assert from 'node:assert/strict';
import type { AppendInput, DeviceAddress, InboxEntry, ServerStore } from '../server/store.js';
import { PENDING_DEVICE } from '../server/users.js';
import type { ConformanceCase } from './conformance.js';

/**
 * A fault injector for a store's underlying writes: give {@link WriteFaults.hook} to the store
 * as its `beforeWrite` option (see `BeforeWrite` in postbox/server), then {@link WriteFaults.failAt}
 * makes the Nth write from then on throw, once.
 *
 * @example
 * ```ts
 * const faults = new WriteFaults();
 * const store = sqliteServerStore({ path, beforeWrite: faults.hook });
 * faults.failAt(3); // the third write of the next call fails, and with it the call
 * ```
 */
export class WriteFaults {
  private at = 0;
  private count = 0;
  private hit = false;

  /** The hook to give the store: throws at the armed write, does nothing otherwise. */
  readonly hook = (write: string): void => {
    if (this.at === 0) return;
    if (++this.count < this.at) return;
    this.at = 0;
    this.hit = true;
    throw new Error(`injected write fault at ${this.count}: ${write}`);
  };

  /** Makes the `n`th write (counted from 1, from now) fail, once; clears {@link fired}. */
  failAt(n: number): void {
    assert.ok(Number.isInteger(n) && n >= 1, 'failAt takes a write number from 1');
    this.at = n;
    this.count = 0;
    this.hit = false;
  }

  /** Stops failing: writes from now on go through. */
  disarm(): void {
    this.at = 0;
  }

  /** Whether the armed fault threw since the last {@link failAt}. */
  get fired(): boolean {
    return this.hit;
  }
}

/** What the fault cases need of a subject. */
interface FaultSubject {
  openWithFaults?(faults: WriteFaults): Promise<ServerStore>;
}

const ann1: DeviceAddress = { user: 'fann', device: 'n1' };
const ann2: DeviceAddress = { user: 'fann', device: 'n2' };
const ben1: DeviceAddress = { user: 'fben', device: 'e1' };
const ben2: DeviceAddress = { user: 'fben', device: 'e2' };
const cid1: DeviceAddress = { user: 'fcid', device: 'c1' };

/** No call of these cases makes more writes; a store that does is reported, not looped on. */
const MAX_WRITES = 400;
const ALL = 1_000_000;
const encoder = new TextEncoder();
const key = (d: DeviceAddress): string => `${d.user}/${d.device}`;

const inbox = (store: ServerStore, d: DeviceAddress, after = 0): Promise<InboxEntry[]> =>
  store.readInbox(d, after, ALL);

/** How many entries of `d`'s inbox carry message `id`, or a `status` about it. */
function count(entries: InboxEntry[], id: string, kind: 'msg' | 'read' | 'delivered'): number {
  return entries.filter((e) =>
    kind === 'msg'
      ? e.kind === 'msg' && e.id === id
      : e.kind === 'status' && e.status === kind && e.ids.includes(id),
  ).length;
}

/** One round's batch: messages to two users and a receipt, each with the devices it reaches. */
function batchOf(
  round: number,
  read: string,
): Array<{ item: AppendInput; kind: 'msg' | 'read'; to: DeviceAddress[] }> {
  const m = (id: string, to: string): AppendInput => ({
    kind: 'msg',
    from: ann1,
    id,
    to,
    seq: round * 10 + id.length,
    body: encoder.encode(id),
  });
  return [
    { item: m(`r${round}a`, 'fben'), kind: 'msg', to: [ann2, ben1, ben2] },
    { item: m(`r${round}bb`, 'fcid'), kind: 'msg', to: [ann2, cid1] },
    {
      item: { kind: 'receipt', from: ben1, id: `r${round}r`, to: 'fann', status: 'read', ids: [read] },
      kind: 'read',
      to: [ann1, ann2, ben2],
    },
    { item: m(`r${round}ccc`, 'fben'), kind: 'msg', to: [ann2, ben1, ben2] },
  ];
}

/**
 * Rounds of `round(n)` for n = 1, 2, … on one store, each with the Nth write failing, until a
 * round's call makes fewer than n writes (the fault did not fire): every write of the call has
 * then been the failing one once.
 */
async function everyWrite(
  subject: FaultSubject,
  round: (store: ServerStore, faults: WriteFaults, n: number) => Promise<boolean>,
): Promise<void> {
  const faults = new WriteFaults();
  const store = await subject.openWithFaults!(faults);
  try {
    for (const d of [ann1, ann2, ben1, ben2, cid1]) await store.registerDevice(d, 1);
    for (let n = 1; ; n++) {
      assert.ok(n <= MAX_WRITES, `a call of a few items makes fewer than ${MAX_WRITES} writes`);
      if (!(await round(store, faults, n))) break;
    }
  } finally {
    faults.disarm();
    await store.close();
  }
}

/** Runs `call` with the nth write failing: true when the fault fired (and the call rejected). */
async function withFault(faults: WriteFaults, n: number, call: () => Promise<unknown>): Promise<boolean> {
  faults.failAt(n);
  let rejected = false;
  try {
    await call();
  } catch {
    rejected = true;
  }
  const fired = faults.fired;
  faults.disarm();
  assert.equal(
    rejected,
    fired,
    fired ? `write ${n} failed: the call rejects` : 'no fault: the call resolves',
  );
  return fired;
}

/** The fault-hook cases, for a subject with `openWithFaults` (run by `serverStoreConformance`). */
export function faultCases(subject: FaultSubject): ConformanceCase[] {
  const appendCase = (name: string, wholeBatch: boolean): ConformanceCase => ({
    name,
    needs: wholeBatch ? ['faults', 'atomicBatch'] : ['faults'],
    run: () =>
      everyWrite(subject, async (store, faults, n) => {
        // Something to read: a message to fben that the batch's receipt (from fben/e1) names.
        const read = `r${n}seen`;
        await store.append(
          [{ kind: 'msg', from: ann1, id: read, to: 'fben', seq: n * 10, body: encoder.encode(read) }],
          n,
        );
        const devices = [ann1, ann2, ben1, ben2, cid1];
        // Each device's reader has seen everything so far (no skip: what comes later is after it).
        const seen = new Map<string, number>();
        for (const d of devices) seen.set(key(d), (await inbox(store, d)).at(-1)?.offset ?? 0);
        const batch = batchOf(n, read);
        const fired = await withFault(faults, n, () =>
          store.append(
            batch.map((b) => b.item),
            100 + n,
          ),
        );
        // Each item is all or nothing: on every device it reaches, or on none.
        const present: boolean[] = [];
        for (const [i, b] of batch.entries()) {
          const counts = [];
          for (const d of b.to)
            counts.push(count(await inbox(store, d), b.item.id === `r${n}r` ? read : b.item.id, b.kind));
          const all = counts.every((c) => c === 1);
          assert.ok(
            all || counts.every((c) => c === 0),
            `item ${i} is on every device it reaches or on none (${counts.join(',')})`,
          );
          present.push(all);
        }
        const committed = present.filter(Boolean).length;
        assert.ok(
          present.every((p, i) => p === i < committed),
          `the items committed are a prefix of the batch (${present.join(',')})`,
        );
        if (wholeBatch)
          assert.equal(committed, fired ? 0 : batch.length, 'a failed batch commits none of its items');
        // The engine's answer to a failure: the clients resend the whole batch.
        const again = await store.append(
          batch.map((b) => b.item),
          200 + n,
        );
        again.forEach((o, i) => {
          assert.ok(o.ok, `resent item ${i} commits`);
          assert.equal(
            o.duplicate,
            present[i],
            `resent item ${i} is a duplicate exactly when its dedupe record held`,
          );
        });
        for (const [i, b] of batch.entries()) {
          for (const d of b.to) {
            const id = b.item.id === `r${n}r` ? read : b.item.id;
            assert.equal(
              count(await inbox(store, d), id, b.kind),
              1,
              `item ${i} reached ${key(d)} exactly once`,
            );
            const later = await inbox(store, d, seen.get(key(d)));
            assert.equal(
              count(later, id, b.kind),
              1,
              `item ${i} on ${key(d)} comes after what its reader had seen`,
            );
          }
        }
        return fired;
      }),
  });
  const cases: ConformanceCase[] = [
    appendCase(
      'a failed append leaves no item half-written and commits a prefix of its batch; the resent batch lands exactly once, after what readers saw',
      false,
    ),
    appendCase('a failed append of a batch that is one transaction (atomicBatch) commits none of it', true),
    {
      name: 'a failed ack deletes nothing and tells no one; the retried ack deletes its entries once and sends one delivered status',
      needs: ['faults'],
      run: () =>
        everyWrite(subject, async (store, faults, n) => {
          const ids = [`k${n}a`, `k${n}b`];
          for (const [i, id] of ids.entries())
            await store.append(
              [{ kind: 'msg', from: ann1, id, to: 'fben', seq: n * 2 + i, body: encoder.encode(id) }],
              n,
            );
          const before = await inbox(store, ben1);
          const offsets = before.filter((e) => e.kind === 'msg' && ids.includes(e.id)).map((e) => e.offset);
          assert.equal(offsets.length, 2, 'both messages wait on fben/e1');
          const fired = await withFault(faults, n, () => store.ack(ben1, offsets, 100 + n));
          const left = (await inbox(store, ben1)).filter((e) => offsets.includes(e.offset)).length;
          const told = (await inbox(store, ann1)).filter(
            (e) => e.kind === 'status' && e.status === 'delivered' && ids.some((id) => e.ids.includes(id)),
          ).length;
          if (fired) {
            assert.equal(left, 2, 'a failed ack deleted none of its entries');
            assert.equal(told, 0, 'a failed ack told the sender nothing');
            const res = await store.ack(ben1, offsets, 200 + n);
            assert.equal(res.count, 2, 'the retried ack deletes both entries');
          } else assert.equal(left, 0, 'an ack without a fault deletes its entries');
          assert.equal(
            (await store.ack(ben1, offsets, 300 + n)).count,
            0,
            'an ack of acked entries deletes nothing',
          );
          for (const d of [ann1, ann2]) {
            const delivered = (await inbox(store, d)).filter(
              (e) => e.kind === 'status' && e.status === 'delivered' && ids.some((id) => e.ids.includes(id)),
            );
            assert.equal(delivered.length, 1, `${key(d)} gets one delivered status`);
            assert.deepEqual(
              [...(delivered[0] as { ids: string[] }).ids].sort(),
              ids,
              'naming both messages',
            );
          }
          // The other device of the recipient acking too produces nothing more (delivered once per user).
          const other = (await inbox(store, ben2)).filter((e) => e.kind === 'msg' && ids.includes(e.id));
          await store.ack(
            ben2,
            other.map((e) => e.offset),
            400 + n,
          );
          const all = (await inbox(store, ann1)).filter(
            (e) => e.kind === 'status' && e.status === 'delivered',
          );
          assert.equal(
            all.filter((e) => ids.some((id) => (e as { ids: string[] }).ids.includes(id))).length,
            1,
          );
          return fired;
        }),
    },
    {
      name: 'a failed expire removes entries only with their expired statuses and gap notices; the retried expire removes each entry once, with one of each',
      needs: ['faults'],
      run: () =>
        everyWrite(subject, async (store, faults, n) => {
          const t = 1000 * n;
          const ids = [`x${n}a`, `x${n}b`];
          const seqs = [n * 10 + 1, n * 10 + 2];
          await store.append(
            ids.map((id, i) => ({
              kind: 'msg',
              from: ann1,
              id,
              to: 'fben',
              seq: seqs[i]!,
              body: encoder.encode(id),
            })),
            t + 1,
          );
          const recipients = [ben1, ben2];
          const named = async (d: DeviceAddress) =>
            (await inbox(store, d)).filter(
              (e) =>
                e.kind === 'gap' &&
                e.streams.some(
                  (st) =>
                    st.from.device === ann1.device &&
                    st.ranges.some(([a, b]) => a <= seqs[0]! && seqs[1]! <= b),
                ),
            ).length;
          const expired = async (d: DeviceAddress) =>
            (await inbox(store, d)).filter(
              (e) => e.kind === 'status' && e.status === 'expired' && ids.every((id) => e.ids.includes(id)),
            ).length;
          const fired = await withFault(faults, n, () => store.expire(t + 2, t + 3));
          if (fired) {
            // A store may expire in several steps (entries, then dedupe records), each whole: the
            // entries are all still there with nothing told, or all gone with everything told.
            const gone = (await inbox(store, ben1)).every((e) => e.kind !== 'msg' || !ids.includes(e.id));
            const what = gone ? 'a step that committed' : 'a failed step';
            for (const d of recipients) {
              const kept = (await inbox(store, d)).filter((e) => e.kind === 'msg' && ids.includes(e.id));
              assert.equal(kept.length, gone ? 0 : 2, `${what} removed all of ${key(d)}'s entries or none`);
              assert.equal(
                await named(d),
                gone ? 1 : 0,
                `${what} told ${key(d)} of the gap with its removal`,
              );
            }
            for (const d of [ann1, ann2])
              assert.equal(await expired(d), gone ? 1 : 0, `${what} told ${key(d)} expired with the removal`);
            await store.expire(t + 2, t + 4);
          }
          for (const d of recipients) {
            const kept = (await inbox(store, d)).filter((e) => e.kind === 'msg' && ids.includes(e.id));
            assert.equal(kept.length, 0, `the expire removed ${key(d)}'s entries`);
            assert.equal(await named(d), 1, `${key(d)} is told of the gap once`);
          }
          for (const d of [ann1, ann2]) assert.equal(await expired(d), 1, `${key(d)} is told expired once`);
          // A clean slate for the next round: every entry acked.
          for (const d of [ann1, ann2, ben1, ben2, cid1]) {
            const offsets = (await inbox(store, d)).map((e) => e.offset);
            if (offsets.length > 0) await store.ack(d, offsets, t + 5);
          }
          return fired;
        }),
    },
    {
      name: 'a failed first registration leaves the pending inbox whole; the retried one takes it over exactly once',
      needs: ['faults'],
      run: () =>
        everyWrite(subject, async (store, faults, n) => {
          const user = `fp${n}`;
          const device: DeviceAddress = { user, device: 'd1' };
          const pending: DeviceAddress = { user, device: PENDING_DEVICE };
          assert.equal(await store.registerUser(user, n), true);
          const ids = [`p${n}a`, `p${n}b`];
          for (const [i, id] of ids.entries())
            await store.append(
              [{ kind: 'msg', from: ann1, id, to: user, seq: i + 1, body: encoder.encode(id) }],
              n,
            );
          const msgIds = async (d: DeviceAddress) =>
            (await inbox(store, d)).flatMap((e) => (e.kind === 'msg' ? [e.id] : []));
          const fired = await withFault(faults, n, () => store.registerDevice(device, 100 + n));
          if (fired) {
            assert.deepEqual(await store.devices(user), [], 'a failed registration registered nothing');
            assert.deepEqual(await msgIds(pending), ids, 'the pending inbox is whole');
            assert.deepEqual(await msgIds(device), [], 'the device has nothing yet');
            await store.registerDevice(device, 200 + n);
          }
          assert.deepEqual(await store.devices(user), ['d1']);
          assert.deepEqual(
            await msgIds(device),
            ids,
            'the device took the pending entries over, once, in order',
          );
          assert.deepEqual(await msgIds(pending), [], 'no pending inbox beside the device');
          return fired;
        }),
    },
  ];
  return cases;
}
