// Raw protocol peers for attacks: a WebSocket that speaks postbox frames by hand (or sends any
// bytes at all), and plain TCP sockets. Attacks build on these instead of the client library,
// which would refuse to misbehave.
import net from 'node:net';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION, decodeServerFrame, encodeFrame } from 'postbox/protocol';
import { signToken } from 'postbox/server';

/** A signed token for `user`/`device` (the server runs with `--secret secret`). */
export function token(secret, user, device = 'd1') {
  return signToken(secret, { user, device, expiresAt: Date.now() + 24 * 3600_000 });
}

/** The `hello` frame for `cred`. */
export function hello(cred) {
  return encodeFrame({ t: 'hello', v: [1, PROTOCOL_VERSION], cred });
}

/**
 * Opens a WebSocket from `localAddress` (any 127.x.y.z on Linux loopback, so one machine can play
 * many client addresses). Resolves once open; rejects on error or an HTTP refusal.
 */
export function openSocket(url, { localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...(localAddress ? { localAddress } : {}) });
    ws.binaryType = 'nodebuffer';
    ws.once('open', () => {
      ws.off('error', reject);
      ws.on('error', () => {});
      resolve(ws);
    });
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => {
      reject(new Error(`HTTP ${res.statusCode}`));
      res.resume();
    });
  });
}

/**
 * A logged-in raw peer: opens a socket, says hello with `cred`, waits for `welcome`.
 * `frames` collects decoded frames unless `onFrame` takes them; `pause()` stops reading the
 * socket (the peer turns into a slow reader: the server's send queue for it grows).
 */
export async function openPeer(url, cred, { localAddress, onFrame, timeoutMs = 15_000 } = {}) {
  const ws = await openSocket(url, { localAddress });
  const frames = [];
  let welcome;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no welcome')), timeoutMs);
    ws.on('message', (data) => {
      let f;
      try {
        f = decodeServerFrame(new Uint8Array(data));
      } catch {
        return;
      }
      if (!welcome) {
        if (f.t === 'welcome') {
          welcome = f;
          clearTimeout(timer);
          resolve();
        } else if (f.t === 'err') {
          clearTimeout(timer);
          reject(new Error(`refused: ${f.c} ${f.m}`));
        }
        return;
      }
      if (onFrame) onFrame(f);
      else if (frames.length < 10_000) frames.push(f);
    });
    ws.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`closed ${code} before welcome`));
    });
    ws.send(hello(cred));
  });
  return {
    ws,
    welcome,
    frames,
    /** Sends a frame object (encoded) or raw bytes. */
    send(frame) {
      if (ws.readyState === ws.OPEN) ws.send(frame instanceof Uint8Array ? frame : encodeFrame(frame));
    },
    /** Stops reading: TCP flow control then leaves the server's bytes queued on its side. */
    pause() {
      ws._socket?.pause();
    },
    get open() {
      return ws.readyState === ws.OPEN;
    },
    close() {
      ws.terminate();
    },
  };
}

/** A plain TCP socket to `host:port` from `localAddress`; resolves when connected. */
export function openTcp(host, port, { localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, ...(localAddress ? { localAddress } : {}) });
    s.once('connect', () => {
      s.off('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
    s.once('error', reject);
  });
}

/**
 * Counts what the server answers a peer into the attack's report: `ok`, `err_<code>` per
 * refusal, and, once the server closes the socket, `closed_<code>`. Returns the `onFrame` to pass
 * to {@link openPeer} (it calls `also(frame)` too, for frames the attack looks at itself).
 */
export function answerCounter(ctx, also) {
  return (f) => {
    if (f.t === 'ok') ctx.count('ok');
    else if (f.t === 'err') ctx.count(`err_${f.c}`);
    also?.(f);
  };
}

/** Counts the code a peer's socket is closed with (`closed_<code>`), unless the attack ended it. */
export function countClose(ctx, peer) {
  peer.ws.once('close', (code) => {
    if (!ctx.signal.aborted) ctx.count(`closed_${code}`);
  });
}

/**
 * Keeps `inFlight` requests outstanding from `user`'s device `d1` until the attack ends, each
 * built by `frame(r)` for request id `r`, reconnecting when the server closes the socket; what the
 * server answers is counted ({@link answerCounter}; `onAnswer(frame)` sees each answer too). Calls
 * `ctx.ready()` once the first session is open.
 */
export async function pipeline(ctx, { user, localAddress, inFlight, frame, onAnswer }) {
  let waiting = 0;
  let r = 0;
  let peer;
  const onFrame = answerCounter(ctx, (f) => {
    if (f.t !== 'ok' && f.t !== 'err') return;
    waiting = Math.max(0, waiting - 1);
    onAnswer?.(f);
  });
  while (!ctx.signal.aborted) {
    if (!peer?.open) {
      try {
        peer = await openPeer(ctx.url, ctx.token(user, 'd1'), { localAddress, onFrame });
        countClose(ctx, peer);
        ctx.count('sessions');
        waiting = 0;
      } catch {
        ctx.count('refused');
        await ctx.sleep(200);
        continue;
      }
      ctx.ready();
    }
    if (waiting >= inFlight) {
      await ctx.sleep(1);
      continue;
    }
    waiting++;
    peer.send(frame(++r));
    ctx.count('requests');
  }
  peer?.close();
}

export { encodeFrame, decodeServerFrame };
