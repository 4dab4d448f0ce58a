import { afterAll, describe, expect, it, vi } from 'vitest';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { sqliteClientStore } from '../src/client/stores/sqlite.js';
import { addressKey, clientCryptoState } from '../src/crypto/common.js';
import { keyedLock } from '../src/crypto/lock.js';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { insecurePlaintextCrypto } from '../src/crypto/plaintext.js';
import type { CryptoAdapter, CryptoStateStore, IdentityHooks, KeyBundle } from '../src/crypto/types.js';
import { cryptoConformance, registerCases, type CryptoStorage } from '../src/testing/index.js';
import { tempDirs } from './fixtures/util.js';

// Kyber key generation and many small sessions make the libsignal cases slower than most.
const CASE_MS = 30_000;
const register = (cases: Array<{ name: string; run(): Promise<void> }>) =>
  registerCases(cases, (name, fn) => it(name, fn, CASE_MS));

describe('crypto conformance: plaintext adapter', () => {
  register(cryptoConformance({ name: 'plaintext', create: () => insecurePlaintextCrypto() }));
});

describe('crypto conformance: libsignal adapter', () => {
  register(cryptoConformance({ name: 'libsignal', create: () => libsignalCrypto() }));
});

const dirs = tempDirs('crypto');
afterAll(() => dirs.removeAll());

/** A device's crypto state in its own SQLite client store file, re-opened from the file on every `open`. */
function sqliteStorage(): CryptoStorage {
  const path = `${dirs.make()}/client.sqlite`;
  let store: ReturnType<typeof sqliteClientStore> | undefined;
  return {
    async open() {
      await store?.close();
      store = sqliteClientStore({ path });
      return clientCryptoState(store);
    },
    async close() {
      await store?.close();
      store = undefined;
    },
  };
}

describe('libsignal adapter over the SQLite client store: state survives a re-open of the file', () => {
  register(
    cryptoConformance({
      name: 'libsignal/sqlite',
      create: () => libsignalCrypto(),
      storage: sqliteStorage,
    }).filter((c) => c.name.includes('re-open')),
  );
});

const trustAll: IdentityHooks = { changed() {}, trust: () => true };
const memoryState = (): CryptoStateStore => clientCryptoState(memoryClientStore());
const text = (s: string) => new TextEncoder().encode(s);

/** An opened device and a bundle of its keys (one-time keys only when `count` > 0). */
async function device(adapter: CryptoAdapter, user: string, count = 1, state = memoryState()) {
  const address = { user, device: 'd1' };
  const identity = await adapter.open(state, address, trustAll);
  const up = await adapter.initialKeys(count);
  const bundle: KeyBundle = {
    ...address,
    registrationId: identity.registrationId,
    identityKey: identity.identityKey,
    signedPreKey: up.signedPreKey!,
    kyberPreKey: up.kyberPreKeys?.[0] ?? up.lastResortKyber!,
    ...(up.preKeys?.[0] ? { preKey: up.preKeys[0] } : {}),
  };
  return { adapter, address, identity, state, bundle };
}

describe('libsignal adapter', () => {
  it('a first message is a ~1.9 KB prekey message; later ones add ~100 bytes to a 100-byte plaintext', async () => {
    const alice = await device(libsignalCrypto(), 'alice');
    const bob = await device(libsignalCrypto(), 'bob');
    await alice.adapter.processBundle(bob.bundle);
    const plaintext = new Uint8Array(100).fill(7);
    const first = await alice.adapter.encrypt(bob.address, plaintext);
    await bob.adapter.decrypt(alice.address, first);
    const reply = await bob.adapter.encrypt(alice.address, plaintext);
    await alice.adapter.decrypt(bob.address, reply);
    const later = await alice.adapter.encrypt(bob.address, plaintext);
    expect(first.kind).toBe('prekey');
    expect(first.body.byteLength).toBeGreaterThan(1500);
    expect(first.body.byteLength).toBeLessThan(2500);
    expect(later.kind).toBe('message');
    expect(later.body.byteLength).toBeLessThan(300);
  });

  it('a replayed prekey message on the last-resort Kyber key is refused even when the session is gone', async () => {
    const alice = await device(libsignalCrypto(), 'alice');
    const bob = await device(libsignalCrypto(), 'bob', 0); // no one-time keys: last resort only
    expect(bob.bundle.preKey).toBeUndefined();
    await alice.adapter.processBundle(bob.bundle);
    const first = await alice.adapter.encrypt(bob.address, text('hello'));
    await bob.adapter.decrypt(alice.address, first);
    // Bob loses the session (as after restoring an old backup): only the store can spot the replay.
    await bob.state.put([{ key: `sess/${addressKey(alice.address)}`, value: undefined }]);
    const restored = libsignalCrypto();
    await restored.open(bob.state, bob.address, trustAll);
    await expect(restored.decrypt(alice.address, first)).rejects.toMatchObject({ code: 'decrypt_failed' });
    expect(await restored.hasSession(alice.address)).toBe(false); // the refused replay left nothing behind
    // A new session on the same last-resort key, with a new base key, still starts.
    await alice.adapter.archiveSession(bob.address);
    await alice.adapter.processBundle(bob.bundle);
    const again = await alice.adapter.encrypt(bob.address, text('hello again'));
    expect(new TextDecoder().decode(await restored.decrypt(alice.address, again))).toBe('hello again');
  });

  it('devices whose names would run together have separate sessions', async () => {
    const alice = await device(libsignalCrypto(), 'alice');
    const ab = await device(libsignalCrypto(), 'a.b'); // device d1
    const other = { user: 'a', device: 'b.d1' };
    expect(addressKey(ab.address)).not.toBe(addressKey(other));
    await alice.adapter.processBundle(ab.bundle);
    expect(await alice.adapter.hasSession(ab.address)).toBe(true);
    expect(await alice.adapter.hasSession(other)).toBe(false);
  });

  it('rotating twice retires the oldest signed prekey: a bundle that old no longer starts a session', async () => {
    const alice = await device(libsignalCrypto(), 'alice');
    const bob = await device(libsignalCrypto(), 'bob');
    await bob.adapter.rotateKeys();
    await bob.adapter.rotateKeys();
    await alice.adapter.processBundle(bob.bundle); // alice cannot tell: only bob can
    const first = await alice.adapter.encrypt(bob.address, text('late'));
    await expect(bob.adapter.decrypt(alice.address, first)).rejects.toMatchObject({ code: 'decrypt_failed' });
  });
});

describe('plaintext adapter', () => {
  it('bodies are the plaintext itself, of kind plaintext', async () => {
    const alice = await device(insecurePlaintextCrypto(), 'alice');
    const bob = await device(insecurePlaintextCrypto(), 'bob');
    expect(alice.adapter.insecure).toBe(true);
    await alice.adapter.processBundle(bob.bundle);
    const c = await alice.adapter.encrypt(bob.address, text('hi'));
    expect(c).toEqual({ kind: 'plaintext', body: text('hi') });
  });

  it('is deterministic from an injected random source', async () => {
    const seeded = () => {
      let x = 1;
      return () => (x = (x * 48271) % 2147483647) / 2147483647;
    };
    const one = await insecurePlaintextCrypto({ random: seeded() }).open(
      memoryState(),
      { user: 'u', device: 'd' },
      trustAll,
    );
    const two = await insecurePlaintextCrypto({ random: seeded() }).open(
      memoryState(),
      { user: 'u', device: 'd' },
      trustAll,
    );
    expect(one).toEqual(two);
  });

  it('warns once per process when created outside tests, never inside them', async () => {
    const env = { VITEST: process.env.VITEST, NODE_ENV: process.env.NODE_ENV };
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    try {
      vi.resetModules();
      const inTests = await import('../src/crypto/plaintext.js');
      inTests.insecurePlaintextCrypto();
      expect(warn).not.toHaveBeenCalled();
      delete process.env.VITEST;
      process.env.NODE_ENV = 'production';
      vi.resetModules();
      const outside = await import('../src/crypto/plaintext.js');
      outside.insecurePlaintextCrypto();
      outside.insecurePlaintextCrypto();
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0]![0])).toMatch(/does NOT encrypt/);
    } finally {
      for (const [k, v] of Object.entries(env)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      warn.mockRestore();
    }
  });
});

describe('keyed lock', () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('runs work for one key one at a time, in call order, and other keys alongside', async () => {
    const lock = keyedLock();
    const log: string[] = [];
    const job = (key: string, name: string, ms: number) =>
      lock.run(key, async () => {
        log.push(`start ${name}`);
        await sleep(ms);
        log.push(`end ${name}`);
        return name;
      });
    const results = await Promise.all([job('a', 'a1', 20), job('a', 'a2', 1), job('b', 'b1', 5)]);
    expect(results).toEqual(['a1', 'a2', 'b1']);
    expect(log).toEqual(['start a1', 'start b1', 'end b1', 'end a1', 'start a2', 'end a2']);
    await sleep(0);
    expect(lock.size).toBe(0);
  });

  it('a failure goes to its caller only; the next call still runs', async () => {
    const lock = keyedLock();
    const failed = lock.run('k', async () => {
      throw new Error('boom');
    });
    const thrown = lock.run('k', () => {
      throw new Error('sync boom');
    });
    const next = lock.run('k', async () => 'ok');
    await expect(failed).rejects.toThrow('boom');
    await expect(thrown).rejects.toThrow('sync boom');
    await expect(next).resolves.toBe('ok');
  });
});
