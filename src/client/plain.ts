/**
 * The plain stage: bodies travel as the app gives them. Outbox items go out as built by
 * wire.ts, delivered messages go straight to the inbound path; nothing here knows encryption
 * exists (the sealing stage is sealed.ts).
 * @packageDocumentation
 */
import type { MsgFrame } from '../protocol/index.js';
import type { ClientContext, Me } from './context.js';
import type { Inbound } from './inbound.js';
import type { Stage } from './stage.js';
import type { OutboxEntry } from './store.js';
import { conversationOf, frameOf, inboundOf } from './wire.js';

const nothing = async (): Promise<void> => {};

/** The plain stage of one client. */
export class PlainStage implements Stage {
  readonly keyWait = undefined;

  constructor(
    private readonly ctx: ClientContext,
    private readonly inbound: Pick<Inbound, 'accept' | 'acceptMessage'>,
  ) {}

  send(entry: OutboxEntry, r: number): void {
    this.ctx.write(frameOf(entry, r));
  }

  open(f: MsgFrame, me: Me): void {
    // An encrypting client's control message (seq 0): nothing for a client without encryption.
    if (f.seq === 0) return this.inbound.accept(f.o, nothing);
    const conv = conversationOf(f.f, f.to, f.g === true, me.user);
    const m = inboundOf(conv, me.user, f.id, f.f, f.fd, f.seq, f.ts, f.b);
    this.inbound.acceptMessage(f.o, m);
  }

  refused(): boolean {
    return false;
  }

  async membersLeft(): Promise<void> {}

  welcome(): void {}

  keysLow(): void {}

  async safetyNumber(): Promise<string | undefined> {
    return undefined;
  }

  async verify(): Promise<boolean> {
    return false;
  }
}
