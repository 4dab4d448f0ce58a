// A TCP proxy for media transfer tests and the media bench: counts the bytes it delivers each way,
// can throttle both directions to a bit rate with a round-trip delay (a 2G/3G profile: this kernel
// has no tc netem), and can cut every connection once the upstream count reaches a chosen offset.
// A cut delivers exactly the bytes up to that offset to the server (the server side is ended, so
// nothing already counted is lost in a socket buffer), then drops the client side.
import net from 'node:net';

/**
 * @param {{ target: number, bps?: number, rttMs?: number, piece?: number }} options
 *   target: port on 127.0.0.1; bps: bits per second each way (0: unthrottled); rttMs: added round
 *   trip (half each way); piece: bytes per scheduled send when throttled.
 */
export async function startThrottleProxy({ target, bps = 0, rttMs = 0, piece = 512 }) {
  const pairs = new Set();
  const state = {
    port: 0,
    /** Bytes delivered to the target. */
    up: 0,
    /** Bytes delivered back to clients. */
    down: 0,
    connections: 0,
    cuts: 0,
    /** When set, every connection is cut once `up` reaches it (then it is cleared). */
    cutAtUp: undefined,
    /** Called after a cut: return the next cut offset (or undefined). */
    onCut: undefined,
    cutAll() {
      for (const p of pairs) p.cut();
    },
    close: () =>
      new Promise((resolve) => {
        state.cutAll();
        server.close(() => resolve());
      }),
  };

  /** Forwards `from` to `to`; returns `finish`, which ends `to` once what is queued has arrived. */
  function lane(from, to, upstream, pair) {
    let nextFree = 0;
    let lastAt = 0;
    let queued = 0;
    let finished = false;
    const deliver = (d) => {
      if (pair.dead) return;
      if (upstream && state.cutAtUp !== undefined && state.up + d.length >= state.cutAtUp) {
        const keep = Math.max(0, state.cutAtUp - state.up);
        state.up += keep;
        to.end(d.subarray(0, keep));
        state.cuts++;
        state.cutAtUp = state.onCut?.();
        pair.cut();
        return;
      }
      if (upstream) state.up += d.length;
      else state.down += d.length;
      to.write(d);
    };
    from.on('data', (d) => {
      if (!bps && !rttMs) return deliver(d);
      for (let o = 0; o < d.length; o += piece) {
        const part = d.subarray(o, o + piece);
        const now = Date.now();
        nextFree = Math.max(now, nextFree) + (bps ? (part.length * 8 * 1000) / bps : 0);
        const at = nextFree + rttMs / 2;
        lastAt = at;
        queued += part.length;
        if (queued > 32 * 1024) from.pause();
        setTimeout(() => {
          queued -= part.length;
          if (queued <= 8 * 1024) from.resume();
          deliver(part);
        }, at - now);
      }
    });
    // A FIN must not overtake the delayed bytes before it: a server that answers and closes would
    // otherwise have its answer dropped (the client sees "other side closed" and retries forever).
    const finish = () => {
      if (finished) return;
      finished = true;
      const wait = lastAt - Date.now();
      const end = () => {
        if (!pair.dead) to.end();
      };
      if (wait > 0) setTimeout(end, wait + 1);
      else end();
    };
    from.on('end', finish);
    from.on('close', finish);
  }

  const server = net.createServer((a) => {
    state.connections++;
    const b = net.connect(target, '127.0.0.1');
    const pair = {
      dead: false,
      cut() {
        if (pair.dead) return;
        pair.dead = true;
        pairs.delete(pair);
        b.end();
        a.destroy();
      },
    };
    pairs.add(pair);
    a.setNoDelay(true);
    b.setNoDelay(true);
    lane(a, b, true, pair);
    lane(b, a, false, pair);
    const end = () => {
      pair.dead = true;
      pairs.delete(pair);
      a.destroy();
      b.destroy();
    };
    a.on('error', end);
    b.on('error', end);
    let closed = 0;
    const onClose = () => {
      if (++closed === 2) end();
    };
    a.on('close', onClose);
    b.on('close', onClose);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = server.address().port;
  return state;
}
