/**
 * The encrypted stage's way in: an entry is decrypted in inbox order, then a message goes the
 * usual inbound way and a control content (sender key, resend request or answer) is handled
 * here. One that cannot be decrypted is acked and asked for again (the sender re-encrypts it over
 * a fresh session); one from an identity that is not trusted (`identityPolicy: 'block'`) stays
 * unacked on the server until it is verified.
 * @packageDocumentation
 */
import { isGroupId, type MsgFrame } from '../protocol/index.js';
import type { ClientContext, Me } from './context.js';
import type { Content, E2ee } from './e2ee.js';
import { KEEP_UNACKED, type Inbound } from './inbound.js';
import type { OutboxEntry } from './store.js';
import { conversationOf, inboundOf } from './wire.js';

/** What opening needs of the rest of the engine. */
export interface OpenDeps {
  ctx: ClientContext;
  e2ee: E2ee;
  inbound: Pick<Inbound, 'accept' | 'receive' | 'pin' | 'have'>;
  /** Whether this device's message may have reached a user (receipts.ts). */
  reached(e: OutboxEntry, user: string): Promise<boolean>;
  /** Queues a control content to a user through the outbox. */
  control(to: string, content: Content): Promise<void>;
}

/** Accepts one encrypted inbox entry (see the module's description). */
export function openSealed(f: MsgFrame, me: Me, d: OpenDeps): void {
  const { e2ee, inbound } = d;
  const group = f.g && f.to !== undefined ? f.to : undefined;
  const from = { user: f.f, device: f.fd };
  inbound.accept(f.o, async () => {
    // An adapter that failed to open is a local fault: not acked, tried again after reconnecting.
    e2ee.assertOpen();
    let content: Content;
    try {
      content = await e2ee.decrypt(from, f.b, group);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (code === 'untrusted_identity') return KEEP_UNACKED;
      // A control message (seq 0) is never asked for again: that could ping-pong over a
      // broken session; a group message that needed a lost sender key is asked for instead.
      // A "replay" is a message decrypted before whose plaintext was never stored (a crash or
      // store failure in between): asked for again unless it is really here.
      const replay = (e as { reason?: unknown }).reason === 'duplicate';
      const conv = conversationOf(f.f, f.to, group !== undefined, me.user);
      if (f.seq !== 0 && !(replay && (await inbound.have(conv, f.id, f.f, f.fd)))) {
        if (!group && !replay) await e2ee.archive(from);
        await d.control(f.f, [2, f.id, f.fd]);
        // Pinned 1:1 too: should the new copy never come, the gap says `undecryptable`.
        await inbound.pin(conv, f.f, f.fd, f.seq);
      }
      return;
    }
    switch (content[0]) {
      case 0: {
        if (f.seq === 0) break; // a message always has a sequence number
        const conv = conversationOf(f.f, f.to, group !== undefined, me.user);
        await inbound.receive(inboundOf(conv, me.user, f.id, f.f, f.fd, f.seq, f.ts, content[1]));
        break;
      }
      case 1:
        if (!group) await e2ee.adapter.processGroupDistribution(from, content[1], content[2]);
        break;
      case 2:
        // For this device: its device id, and addressed to this user (not a copy of a
        // request this user's other device sent someone else).
        if (content[2] === me.device && (f.to === undefined || f.to === me.user)) {
          await answerResend(d, me, f.f, f.fd, content[1]);
        }
        break;
      case 3: {
        // Sent again over a fresh session: the conversation is the original's (its `to`).
        const [, id, seq, to, body, ts] = content;
        const conv = conversationOf(f.f, to ?? undefined, to !== null && isGroupId(to), me.user);
        await inbound.receive(inboundOf(conv, me.user, id, f.f, f.fd, seq, ts, body));
        break;
      }
      case 4:
        d.ctx.emit('undecryptable', { from: f.f, fromDevice: f.fd, id: content[1] });
        break;
    }
  });
}

/** A peer device could not decrypt message `id`: send it again over a fresh session, or say it cannot be. */
async function answerResend(d: OpenDeps, me: Me, user: string, device: string, id: string): Promise<void> {
  const e = await d.ctx.store.outgoing(id);
  const allowed =
    e !== undefined &&
    e.kind === 'msg' &&
    e.body !== undefined &&
    d.ctx.clock.now() - e.createdAt <= d.ctx.opts.resendWindowMs &&
    (user === me.user || (await d.reached(e, user)));
  // The requester's session is broken: either answer goes over a fresh one.
  await d.e2ee.archive({ user, device });
  if (!allowed) {
    await d.control(user, [4, id]);
    return;
  }
  await d.control(user, [3, id, e.seq ?? 0, e.to, e.body!, e.createdAt]);
}
