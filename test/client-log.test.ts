// Client-caused warnings are logged a few times per device per minute, never a disk-filling flood.
import { describe, expect, it } from 'vitest';
import { RateLimitedLog } from '../src/server/client-log.js';
import type { Logger } from '../src/server/engine.js';

function recorder() {
  const lines: string[] = [];
  const log: Logger = { debug() {}, info() {}, warn: (m) => lines.push(m), error() {} };
  return { lines, log };
}

describe('rate-limited client warnings', () => {
  it('a device flooding refusals gets 5 lines and one notice per minute; others keep theirs; all count', () => {
    const { lines, log } = recorder();
    let now = 0;
    const rl = new RateLimitedLog(log, () => now);
    for (let i = 0; i < 1500; i++) rl.warn('alice/phone', 'key upload refused');
    expect(lines).toHaveLength(6);
    expect(lines[5]).toMatch(/more from it this window are not logged/);
    rl.warn('bob/phone', 'key upload refused');
    expect(lines).toHaveLength(7);
    expect(rl.dropped).toBe(1494);
    now = 60_000;
    rl.warn('alice/phone', 'key upload refused');
    expect(lines).toHaveLength(8);
  });

  it('many devices together stop at the total per window', () => {
    const { lines, log } = recorder();
    const rl = new RateLimitedLog(log, () => 0, { total: 10 });
    for (let i = 0; i < 500; i++) rl.warn(`u${i}/d`, 'typing notice dropped');
    expect(lines).toHaveLength(11);
    expect(lines[10]).toMatch(/the rest are dropped/);
    expect(rl.dropped).toBe(489);
  });
});
