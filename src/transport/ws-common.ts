/**
 * What both halves of the WebSocket transport share (the client in websocket-client.ts, the
 * Node server in websocket.ts): close reasons and codes, the drain gate and the handler slot.
 * Browser-safe, like the client half: no Node built-ins.
 * @packageDocumentation
 */
import { CLOSE_CODES } from '../protocol/errors.js';
import type { Clock } from '../util/clock.js';
import type { Connection, ConnectionHandlers } from './types.js';

/** RFC 6455 limits a close reason to 123 bytes of UTF-8. */
const MAX_REASON_BYTES = 123;

/**
 * A socket error's message, or "network error" when it has none.
 * @internal
 */
export function errorMessage(event: unknown): string {
  const message =
    (event as { message?: unknown } | null)?.message ??
    (event as { error?: { message?: unknown } } | null)?.error?.message;
  return typeof message === 'string' && message !== '' ? message : 'network error';
}

/**
 * The close code a `ws` error stands for (the code `ws` sends the peer), when the error says.
 * Platform WebSockets give errors no detail; their close event then decides.
 * @internal
 */
export function errorCloseCode(error: unknown): { code: number; reason: string } | undefined {
  const e = (error as { error?: unknown } | null)?.error ?? error;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('WS_ERR_')) return undefined;
  const reason = truncateReason(errorMessage(e));
  if (code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') return { code: CLOSE_CODES.tooLarge, reason };
  if (code === 'WS_ERR_INVALID_UTF8') return { code: 1007, reason };
  return { code: 1002, reason };
}

/**
 * Cuts a close reason to the 123 bytes of UTF-8 a close frame can carry, on a character boundary.
 * @internal
 */
export function truncateReason(reason: string): string {
  if (reason.length <= MAX_REASON_BYTES / 3) return reason;
  const encoder = new TextEncoder();
  if (encoder.encode(reason).byteLength <= MAX_REASON_BYTES) return reason;
  let out = '';
  let bytes = 0;
  for (const ch of reason) {
    const n = encoder.encode(ch).byteLength;
    if (bytes + n > MAX_REASON_BYTES) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/**
 * When to call `drain`: once the buffer falls back to `lowWater` after a send left it above, and
 * once more when it empties — so an owner whose own high-water mark is below `lowWater` is not
 * left waiting for an event that never comes. A class, not closures: one lives per connection.
 * @internal
 */
export class DrainGate {
  private above = false;
  private toEmpty = false;
  constructor(private readonly lowWater: number) {}
  /** Call after each send with the buffered amount. */
  sent(amount: number): void {
    if (amount > this.lowWater) {
      this.above = true;
      this.toEmpty = false;
    }
  }
  /** Call when bytes may have left the buffer; true when `drain` is due. */
  settle(amount: number): boolean {
    if (this.above && amount <= this.lowWater) {
      this.above = false;
      this.toEmpty = amount > 0;
      return true;
    }
    if (this.toEmpty && amount === 0) {
      this.toEmpty = false;
      return true;
    }
    return false;
  }
  /** True while a `drain` is still owed. */
  get pending(): boolean {
    return this.above || this.toEmpty;
  }
}

/**
 * Hands a connection's events to its owner with the guarantees of `Connection`: frames that
 * arrive before `setHandlers` are kept, in order, and handed over on the next turn (not inside
 * `setHandlers`, whose caller may still be wiring itself up); later frames queue behind them; the
 * close handler fires at most once, after every frame; nothing follows it. A handler that throws
 * does not propagate into the socket's event loop (on Node that would crash the process): the
 * connection is closed with 1011 instead. A class, not closures: one lives per connection.
 * @internal
 */
export class HandlerSlot {
  private handlers: ConnectionHandlers | undefined;
  private inbox: Uint8Array[] = [];
  private pendingClose: { code: number; reason: string } | undefined;
  private flushing = false;
  private closed = false;

  constructor(
    private readonly clock: Clock,
    private readonly connection: Pick<Connection, 'close'>,
  ) {}

  private guarded(fn: (h: ConnectionHandlers) => void): void {
    try {
      fn(this.handlers!);
    } catch {
      this.connection.close(CLOSE_CODES.internal, 'connection handler threw');
    }
  }

  private flush(): void {
    const h = this.handlers!;
    // `inbox` may be replaced (emptied) by a close from inside a handler; read it afresh each time.
    for (let i = 0; i < this.inbox.length; i++) {
      const data = this.inbox[i]!;
      this.guarded((x) => x.frame(data));
    }
    this.inbox = [];
    this.flushing = false;
    const close = this.pendingClose;
    this.pendingClose = undefined;
    if (close) {
      try {
        h.close(close.code, close.reason);
      } catch {
        // The connection is gone either way; a throwing close handler must not crash the process.
      }
    }
  }

  private schedule(): void {
    if (!this.handlers || this.flushing) return;
    this.flushing = true;
    this.clock.setTimeout(() => this.flush(), 0);
  }

  set(h: ConnectionHandlers, id: string): void {
    if (this.handlers) throw new Error(`websocket transport: setHandlers called twice on ${id}`);
    this.handlers = h;
    if (this.inbox.length > 0 || this.pendingClose) this.schedule();
  }

  frame(data: Uint8Array): void {
    if (this.closed) return;
    if (this.handlers && !this.flushing) this.guarded((h) => h.frame(data));
    else this.inbox.push(data);
  }

  drain(): void {
    if (this.closed || !this.handlers || this.flushing) return;
    this.guarded((h) => h.drain?.());
  }

  /** The peer closed or the socket died: tell the owner after the frames already received. */
  closeRemote(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.pendingClose = { code, reason };
    if (this.handlers && !this.flushing) this.flush();
  }

  /** The owner closed: drop frames not yet handed over, and tell the owner on a later turn. */
  closeLocal(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.inbox = [];
    this.pendingClose = { code, reason };
    this.schedule();
  }
}
