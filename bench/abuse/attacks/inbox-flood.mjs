// Issue 22, item 4: 64 KB messages to one offline victim, as fast as the server takes them.
// Unguarded this added 132 MB in 12 s with no cap; now the victim's device has an inbox quota
// (20,000 entries / 64 MiB), and once it is full the sender is refused with `inbox_full` (typed,
// retryable), nothing stored. Before that, the sender's cost budget charges each frame's size (1
// unit per 64 bytes: a 64 KB message is 1,024 units), so the device writes about 10 of them a
// second, is refused `rate_limited` beyond that and closed 4003 in debt.
import { openPeer, pipeline } from '../lib/wire-peer.mjs';

const BODY = 64 * 1024;
const IN_FLIGHT = 32; // under the 256 pending sends that close 4003
const VICTIM = 'sleeper';

export const about = `one device sends ${BODY / 1024} KB messages to one offline victim, ${IN_FLIGHT} in flight, reconnecting when closed`;
// The victim's inbox quota (64 MiB of bodies) in the database, and as much again in the WAL file,
// which SQLite reuses from its start after a checkpoint but does not shrink (measured: +121 MB).
export const bounds = { diskMb: 2 * 64 + 16 };

export async function run(ctx) {
  // The victim exists (said hello once) and is gone: everything waits in its inbox.
  const v = await openPeer(ctx.url, ctx.token(VICTIM, 'd1'), { localAddress: ctx.addresses[1] });
  v.close();
  const body = new Uint8Array(BODY).fill(0x41);
  // At full strength from the first frame: the measurement covers filling the inbox too.
  await pipeline(ctx, {
    user: 'flooder',
    localAddress: ctx.addresses[0],
    inFlight: IN_FLIGHT,
    frame: (r) => ({ t: 'send', r, id: `f${r}`, to: VICTIM, seq: r, b: body }),
    onAnswer: (f) => f.t === 'ok' && ctx.count('stored_mb', BODY / 2 ** 20),
  });
}
