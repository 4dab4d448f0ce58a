// Idle density (load side): opens connections (authenticated sessions for postbox and Socket.IO,
// plain sockets for `ws`) in steps and asks the orchestrator to measure the server's heap and RSS
// after a full GC at each step. Per-connection cost = growth over a small baseline / connections.
import { mark, sleep } from '../lib/child.mjs';

export async function run(sys, p) {
  const { url, steps, base } = p;
  const handles = [await sys.openIdle({ url, from: 0, count: base })];
  await sleep(500);
  const b = await mark('mem', { mem: true });
  let open = base;
  const out = {};
  for (const target of steps) {
    handles.push(await sys.openIdle({ url, from: open, count: target - open }));
    open = target;
    await sleep(1500);
    const m = await mark('mem', { mem: true });
    if (m.connections !== undefined && m.connections < target) {
      throw new Error(`server sees ${m.connections} connections, expected ${target}`);
    }
    const k = target >= 1000 ? `${target / 1000}k` : String(target);
    const conns = target - base;
    out[`${k}:heap_kb_per_conn`] = (m.mem.heapUsed - b.mem.heapUsed) / conns / 1024;
    out[`${k}:rss_kb_per_conn`] = (m.mem.rss - b.mem.rss) / conns / 1024;
  }
  for (const h of handles) await h.close();
  return out;
}
