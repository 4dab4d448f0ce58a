/**
 * How many bytes a WebSocket peer has not yet shown it read. `bufferedAmount` counts only what
 * waits in the process: on a fast link (loopback above all) the kernel's socket buffers take
 * several MB per connection first, so a peer that stops reading looks caught up until they are
 * full, and every byte written into them costs the server's core the copy and the TCP work. A
 * ping proves more: the peer's pong comes back only once it read everything sent before the ping
 * (frames are in order), so the bytes sent up to an answered ping are read.
 *
 * One ping is out at a time, sent once `probeBytes` went out unconfirmed; its payload is random,
 * so a pong the peer made up (unsolicited pongs are legal) confirms nothing. Every WebSocket
 * client answers pings by itself (browsers, `ws`), so nothing is asked of the app.
 * @internal
 * @packageDocumentation
 */
import { randomBytes } from 'node:crypto';

/** Bytes sent and the part of them confirmed read, per connection. */
export class ReadConfirmations {
  private sent = 0;
  private confirmed = 0;
  /** The outstanding ping's payload, and `sent` when it went out. */
  private probe: Buffer | undefined;
  private probeAt = 0;

  constructor(private readonly probeBytes: number) {}

  /** Bytes sent that no answered ping covers yet (what is queued here included). */
  get unread(): number {
    return this.sent - this.confirmed;
  }

  /** Counts `n` bytes sent; returns the payload of a ping to send now, if one is due. */
  sentBytes(n: number): Buffer | undefined {
    this.sent += n;
    return this.due();
  }

  /**
   * A pong with `payload` came back: when it answers the outstanding ping, what was sent before
   * that ping is read. Returns the payload of the next ping, if one is due.
   */
  pong(payload: Buffer): Buffer | undefined {
    if (!this.probe || !payload.equals(this.probe)) return undefined;
    this.confirmed = this.probeAt;
    this.probe = undefined;
    return this.due();
  }

  private due(): Buffer | undefined {
    if (this.probe || this.sent - this.confirmed < this.probeBytes) return undefined;
    this.probeAt = this.sent;
    this.probe = randomBytes(8);
    return this.probe;
  }
}
