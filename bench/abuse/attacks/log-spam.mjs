// Issue 22, item 7: a client-caused warning at a high rate. A device's first key upload without
// a signed prekey is refused, and the server logged every refusal at warn.
import { openPeer } from '../lib/wire-peer.mjs';

const RATE = 1500;

export const about = `one logged-in device sends key uploads the server refuses (no signed prekey), ${RATE}/s, under the 2,000 frames/s limit`;
export const bounds = { logKb: 64 };

export async function run(ctx) {
  let peer;
  let r = 0;
  const frame = () => ({ t: 'keys', r: ++r, rid: 1, ik: new Uint8Array(33).fill(5) });
  while (!ctx.signal.aborted) {
    try {
      peer ??= await openPeer(ctx.url, ctx.token('spammer', 'd1'), {
        localAddress: ctx.addresses[0],
        onFrame: () => {},
      });
    } catch {
      ctx.count('refused');
      await ctx.sleep(200);
      continue;
    }
    ctx.ready();
    // 10 ms ticks of RATE/100 frames.
    const t0 = performance.now();
    for (let i = 0; i < RATE / 100 && peer.open; i++) peer.send(frame());
    ctx.count('frames', RATE / 100);
    if (!peer.open) {
      ctx.count('closed');
      peer = undefined;
    }
    await ctx.sleep(Math.max(0, 10 - (performance.now() - t0)));
  }
  peer?.close();
}
