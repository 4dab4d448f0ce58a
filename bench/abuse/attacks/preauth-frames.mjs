// Issue 22, item 1: frames full of msgpack extension types (msgpackr decodes type 0x65 into an
// Error, capturing a stack trace each) sent before `hello`, so no credentials are needed.
import { Packr } from 'msgpackr';
import { openSocket } from '../lib/wire-peer.mjs';

const RATE_BYTES_PER_S = 512 * 1024;
const PARALLEL = 8;

export const about = `8 unauthenticated connections send frames packed with msgpack Error extensions before hello (160 KB and 15 KB frames alternately, ${RATE_BYTES_PER_S / 1024} KB/s in all), reconnecting when closed`;

/** A msgpack array of Error extension values, close to `bytes` long. */
function errorsFrame(bytes) {
  const packr = new Packr({ moreTypes: true, useRecords: false });
  const one = packr.pack(new Error('x')).length;
  return packr.pack(Array.from({ length: Math.floor(bytes / one) }, () => new Error('x')));
}

export async function run(ctx) {
  const frames = [errorsFrame(160 * 1024), errorsFrame(15 * 1024)];
  let k = 0;
  // A token bucket for the byte rate, shared by the connections.
  let budget = 0;
  let last = performance.now();
  const take = async (n) => {
    for (;;) {
      const now = performance.now();
      budget = Math.min(RATE_BYTES_PER_S, budget + ((now - last) / 1000) * RATE_BYTES_PER_S);
      last = now;
      if (budget >= n || ctx.signal.aborted) break;
      await ctx.sleep(Math.ceil(((n - budget) / RATE_BYTES_PER_S) * 1000));
    }
    budget -= n;
  };
  const worker = async (w) => {
    while (!ctx.signal.aborted) {
      let ws;
      try {
        ws = await openSocket(ctx.url, { localAddress: ctx.addresses[w % ctx.addresses.length] });
      } catch {
        ctx.count('refused');
        await ctx.sleep(100);
        continue;
      }
      const closed = new Promise((r) => ws.once('close', r));
      ctx.count('connections');
      while (!ctx.signal.aborted && ws.readyState === ws.OPEN) {
        const frame = frames[k++ % frames.length];
        await take(frame.length);
        if (ws.readyState !== ws.OPEN) break;
        ws.send(frame);
        ctx.count('frames');
        ctx.count('bytes', frame.length);
        // Give the server the chance to close; a server that keeps reading gets more.
        await Promise.race([closed, ctx.sleep(50)]);
      }
      ws.terminate();
    }
  };
  const workers = Array.from({ length: PARALLEL }, (_, w) => worker(w));
  ctx.ready();
  await Promise.all(workers);
}
