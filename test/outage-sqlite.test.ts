// The disk under a real `postbox serve --data …` (SQLite) fills up (issue 15): the send that
// cannot be written must not be acked, the client must be told to try again later and keep its
// message, the node must stay up (no crash loop) and say 503 on /readyz while the disk is full,
// and everything must work again, with nothing lost or doubled, once there is space. The disk
// is a real one: a 8 MiB tmpfs, filled with a file (needs `mount`, so root).
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { chatter, cleanUp, eventually, expectDeliveredOnce, serve } from './fixtures/outage.js';
import { sleep, tempDirs, until } from './fixtures/util.js';

const TITLE = 'postbox serve when the disk under SQLite fills up';
const dirs = tempDirs('diskfull');

/** Mounts a small tmpfs; the reason it cannot, or undefined when it did. */
function mountTmpfs(dir: string): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (e) {
    return `cannot mount a tmpfs to fill (${(e as Error).message.split('\n')[0]}); run as root`;
  }
}

/** Writes a file until the disk is full; returns its path. */
function fill(dir: string): string {
  const path = join(dir, 'filler');
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(64 * 1024, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    closeSync(fd);
  }
  return path;
}

const probeDir = dirs.make();
const reason = mountTmpfs(probeDir);
if (!reason) execFileSync('umount', [probeDir]);

if (reason) {
  console.warn(`${TITLE}: SKIPPED: ${reason}`);
  describe.skip(`${TITLE} (skipped: ${reason})`, () => {
    it('refuses sends and recovers', () => {});
  });
} else {
  describe(TITLE, () => {
    let mounted: string | undefined;
    afterEach(async () => {
      await cleanUp();
      await sleep(100);
      if (mounted) execFileSync('umount', ['-l', mounted]);
      mounted = undefined;
      dirs.removeAll();
    });

    it(
      'a send that cannot be written is not acked, the client is told to try again later, the node stays up and not ready, and all goes through once there is space',
      { timeout: 60_000 },
      async () => {
        const dir = dirs.make();
        expect(mountTmpfs(dir)).toBeUndefined();
        mounted = dir;
        const node = await serve(['--data', join(dir, 'postbox.sqlite')]);
        const alice = chatter(() => node.url, 'alice');
        const bob = chatter(() => node.url, 'bob');
        await until('both online', () => alice.client.state === 'open' && bob.client.state === 'open');
        await alice.send('bob', 'hello');
        await until('hello delivered', () => bob.received.includes('hello'));

        const filler = fill(dir);
        // Bigger than what the WAL file already holds, so the commit must grow it.
        const big = `on a full disk ${'x'.repeat(60_000)}`;
        const id = await alice.send('bob', big);
        await until('alice told to try again later', () => alice.drops.includes('unavailable'));
        await eventually('/readyz 503', () => node.readyz(), 503);
        // Clients keep retrying meanwhile; none of it is acked, and the node stays up.
        await sleep(1500);
        expect(alice.status.get(id)).toBe('pending');
        expect(node.exitCode, `the node exited; stderr: ${node.p.stderr()}`).toBeUndefined();
        expect(await node.readyz()).toBe(503);

        rmSync(filler);
        await eventually('/readyz 200', () => node.readyz(), 200);
        await until('delivered once there is space', () => bob.received.includes(big), 20_000);
        await until('acked', () => alice.acked().includes(id));
        expectDeliveredOnce(alice, bob, ['hello', big]);
        expect(node.exitCode).toBeUndefined();
      },
    );
  });
}
