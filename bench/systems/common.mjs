// Helpers shared by the load sides of every system.

/** Where the message tag (u32 LE) sits in a frame the `ws` relays deliver: after the sender. */
export const TAG_OFFSET_WS = 2;

export function tagOf(buf, offset = 0) {
  return buf.readUInt32LE(offset);
}

/**
 * Opens `count` connections with `open(k)`, at most `parallel` handshakes at a time (a burst of
 * thousands of simultaneous handshakes measures the accept queue, not the system).
 */
export async function openMany(count, open, parallel = 256) {
  const out = new Array(count);
  let next = 0;
  async function worker() {
    while (next < count) {
      const k = next++;
      out[k] = await open(k);
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  return out;
}
