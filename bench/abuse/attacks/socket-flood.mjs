// Issue 22, item 3: one address opens as many sockets as it can and holds them: most stay silent
// (raw TCP, never an HTTP request), a third send their HTTP headers one byte every 2 s. The
// server runs with an open-files limit of 8,192 here, so the flood would exhaust it unguarded.
import { openTcp } from '../lib/wire-peer.mjs';

const TARGET = 12_000;
const CONNECTS_PER_S = 2_000;
const HEADER = 'GET /healthz HTTP/1.1\r\nHost: postbox\r\nX-Slow: ';

export const about = `one address opens up to ${TARGET} TCP sockets (${CONNECTS_PER_S}/s, reopening what the server closes): two thirds silent, one third sending HTTP headers a byte every 2 s; the server's open-files limit is 8,192`;
export const serveFileLimit = 8192;

export async function run(ctx) {
  const open = new Set();
  const slow = new Set();
  const from = ctx.addresses[0];
  let n = 0;
  const connectOne = async () => {
    let s;
    try {
      s = await openTcp(ctx.host, ctx.port, { localAddress: from });
    } catch (e) {
      ctx.count(`connect_${e.code ?? 'error'}`);
      return;
    }
    ctx.count('opened');
    open.add(s);
    s.on('close', () => {
      open.delete(s);
      slow.delete(s);
      if (!ctx.signal.aborted) ctx.count('closed_by_server');
    });
    s.on('data', () => {});
    if (n++ % 3 === 0) {
      s.write(HEADER);
      slow.add(s);
    }
  };
  const trickle = setInterval(() => {
    for (const s of slow) s.write('x');
  }, 2000);
  let readied = false;
  const started = performance.now();
  while (!ctx.signal.aborted) {
    const t0 = performance.now();
    const want = Math.min(CONNECTS_PER_S / 10, TARGET - open.size);
    await Promise.all(Array.from({ length: Math.max(0, want) }, connectOne));
    ctx.stats.held = open.size;
    ctx.stats.held_max = Math.max(ctx.stats.held_max ?? 0, open.size);
    // At full strength once the target is held, or after 8 s of trying (the server refuses).
    if (!readied && (open.size >= TARGET || performance.now() - started > 8000)) {
      readied = true;
      ctx.ready();
    }
    await ctx.sleep(Math.max(0, 100 - (performance.now() - t0)));
  }
  clearInterval(trickle);
  for (const s of open) s.destroy();
}
