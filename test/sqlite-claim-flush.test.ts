// A key claim that took no one-time key wrote nothing, so the SQLite store answers it without a
// WAL flush: many accounts claiming drained devices' last-resort bundles (the `slow-readers`
// attack of bench/abuse) cannot keep the disk flushing under everyone else's messages. A claim
// that took a key is answered only after a flush, as before.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';

const flushes = vi.hoisted(() => ({ n: 0 }));
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const fdatasync = (fd: number, cb: (e: NodeJS.ErrnoException | null) => void): void => {
    flushes.n++;
    real.fdatasync(fd, cb);
  };
  return { ...real, default: real, fdatasync };
});

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-claim-flush-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const key = (id: number) => ({ id, key: new Uint8Array([id]), signature: new Uint8Array([id]) });

describe('key claims on a SQLite file', () => {
  it('a claim that takes a one-time key waits for a WAL flush; one that takes none (last-resort bundles) flushes nothing', async () => {
    const store = sqliteServerStore({ path: path.join(dir, 'db.sqlite'), walFlush: 'background' });
    const bob = { user: 'bob', device: 'b1' };
    await store.registerDevice(bob, 1);
    await store.putKeys(bob, {
      registrationId: 1,
      identityKey: new Uint8Array([1]),
      signedPreKey: key(1),
      lastResortKyber: key(9000),
      preKeys: [{ id: 5, key: new Uint8Array([5]) }],
    });
    const before = flushes.n;
    const first = await store.claimKeys(['bob', 'carol']);
    expect(first.map((b) => b.preKey?.id)).toEqual([5]);
    expect(flushes.n).toBe(before + 1);
    // Drained: every later claim is a last-resort bundle, read and answered without a flush.
    for (let i = 0; i < 20; i++) {
      const later = await store.claimKeys(['bob', 'carol']);
      expect(later.map((b) => [b.preKey, b.kyberPreKey.id])).toEqual([[undefined, 9000]]);
    }
    expect(flushes.n).toBe(before + 1);
    await store.close();
  });
});
