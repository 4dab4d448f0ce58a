/**
 * Receipts of what this device sent: 1:1 statuses through `nextStatus`, group members' receipts
 * through `memberStep` (status.ts) with their counters and the aggregate they move, the check
 * that a status comes from someone the message may have reached, and the "message info" view.
 * @packageDocumentation
 */
import { isGroupId, type PostboxError, type StatusFrame } from '../protocol/index.js';
import type { ClientContext } from './context.js';
import { failureFor, withFailure } from './failure.js';
import { decodeCounts, decodeRecipients, encodeCounts } from './groups.js';
import {
  NS_GROUP_COUNT,
  NS_GROUP_JOINED,
  NS_GROUP_SEND,
  NS_GROUP_SEND_VER,
  NS_MEMBER_STATUS,
  decodeNumber,
  pairKey,
} from './namespaces.js';
import {
  MEMBER_RECEIPT_CODE,
  MEMBER_RECEIPT_NAME,
  memberStep,
  nextStatus,
  type MemberReceipt,
} from './status.js';
import type { LiveEntries } from './outbox.js';
import type { MessageStatus, OutboxEntry, SendFailure } from './store.js';
import type { MessageInfo, StatusChange } from './types.js';
import { STATUS_FROM_WIRE } from './wire.js';

/** The answer of a move that changes nothing: one settled promise, not one per call. */
const SETTLED: Promise<void> = Promise.resolve();

/** Recipients of recent group messages kept in memory for the receipts that follow. */
const RECIPIENT_CACHE = 64;

/** The receipts part of one client. */
export class Receipts {
  private readonly recipientCache = new Map<string, Set<string>>();

  constructor(
    private readonly ctx: ClientContext,
    /** Outgoing entries kept in memory (outbox.ts): most statuses need no store read. */
    private readonly live: LiveEntries,
    /** Takes an item out of the outbox queue (a status can overtake the `ok`). */
    private readonly unqueue: (id: string) => void,
  ) {}

  /**
   * An `st` entry: statuses of this device's messages (believed only from a user the message may
   * have reached), or this user's own reads on another device. Throws on a store failure (the
   * entry is then not acked).
   */
  onStatus(f: StatusFrame): Promise<void> {
    const status = STATUS_FROM_WIRE[f.s];
    // Nearly every status is one id of a recent 1:1 message: taken here, with no async function
    // around it; anything else goes the general way (statusesOf), under the same rules.
    const entry = f.ids.length === 1 ? this.live.get(f.ids[0]!) : undefined;
    if (entry && entry.kind === 'msg' && !isGroupId(entry.to) && f.by !== this.ctx.me?.user) {
      if (entry.to !== f.by) return SETTLED; // forged: only its recipient can have it
      this.unqueue(entry.id);
      return this.move(entry, status, f.by);
    }
    return this.statusesOf(f, status);
  }

  /** {@link onStatus}, every case. */
  private async statusesOf(f: StatusFrame, status: MessageStatus): Promise<void> {
    const ctx = this.ctx;
    if (status === 'read' && ctx.me && f.by === ctx.me.user) {
      await ctx.store.markRead(f.ids);
      ctx.emit('readElsewhere', f.ids);
      return;
    }
    for (const id of f.ids) {
      // From memory, without an await, for the recent messages that nearly every status is about.
      const entry = this.live.get(id) ?? (await this.ctx.store.outgoing(id));
      // Only a user the message went to can have received or read it: a status from anyone
      // else is forged (a server that does not check forwarded it) and changes nothing.
      // A 1:1 message's answer is at hand; a group's may need the store.
      if (!entry) continue;
      const oneToOne = entry.kind === 'msg' && !isGroupId(entry.to);
      if (!(oneToOne ? entry.to === f.by : await this.reached(entry, f.by))) continue;
      // A status can overtake the `ok` (the ok was lost with a connection); it settles the item too.
      this.unqueue(id);
      if (isGroupId(entry.conv)) await this.onMemberStatus(entry, f.by, status);
      else await this.move(entry, status, f.by);
    }
  }

  /**
   * Moves an outgoing item's status forward (see `nextStatus`), storing why with a `failed` or
   * `expired` one (`error`: the refusal), and tells the app about messages.
   */
  applyStatus(id: string, event: MessageStatus, by?: string, error?: PostboxError): Promise<void> {
    // Not `async`: the entry is nearly always in memory, and then `move`'s promise is the answer.
    const entry = this.live.get(id);
    if (entry) return this.move(entry, event, by, error);
    return this.ctx.store.outgoing(id).then((e) => (e ? this.move(e, event, by, error) : undefined));
  }

  /**
   * {@link applyStatus} of an entry at hand. Not `async`: two of these run in every message's life
   * (✓ and ✓✓), and the store's promise with one `then` is the whole cost.
   */
  private move(entry: OutboxEntry, event: MessageStatus, by?: string, error?: PostboxError): Promise<void> {
    const next = nextStatus(entry.status, event);
    if (next === entry.status) return SETTLED;
    const failure = failureFor(next, entry.to, error);
    let stored: Promise<void>;
    try {
      stored = this.ctx.store.setStatus(entry.id, next, failure);
    } catch (e) {
      stored = Promise.reject(e as Error); // a store that throws fails the same way as one that rejects
    }
    return stored.then(
      () => this.moved(entry, next, failure, by),
      (e: unknown) => {
        this.live.forget(entry.id);
        throw e;
      },
    );
  }

  /** The status is stored: the entry in memory follows, and the app hears of a message's. */
  private moved(
    entry: OutboxEntry,
    next: MessageStatus,
    failure: SendFailure | undefined,
    by?: string,
  ): void {
    this.live.moved(entry, next, failure);
    if (entry.kind !== 'msg') return;
    const change: StatusChange = { id: entry.id, conv: entry.conv, status: next };
    if (by !== undefined) change.by = by;
    this.ctx.emit('status', failure ? withFailure(change, failure) : change);
  }

  /**
   * One member's receipt of a group message this device sent: recorded per member, counted
   * against the recipients known at send time, and the aggregate moves when every one has it.
   */
  private async onMemberStatus(entry: OutboxEntry, user: string, status: MessageStatus): Promise<void> {
    if (status !== 'delivered' && status !== 'read' && status !== 'expired') return;
    const { id } = entry;
    const store = this.ctx.store;
    if (entry.status === 'pending') await this.move(entry, 'sent');
    const key = pairKey(id, user);
    const old = MEMBER_RECEIPT_NAME[(await store.getState(NS_MEMBER_STATUS, key))?.[0] ?? 0];
    const step = memberStep(old, status);
    if (!step) return;
    const recipients = await this.recipientsOf(id);
    const raw = await store.getState(NS_GROUP_COUNT, id);
    const count = raw ? decodeCounts(raw) : { delivered: 0, read: 0 };
    if (recipients.has(user)) {
      count.delivered += step.delivered;
      count.read += step.read;
    }
    await store.putState([
      { ns: NS_MEMBER_STATUS, key, value: Uint8Array.of(MEMBER_RECEIPT_CODE[status]) },
      { ns: NS_GROUP_COUNT, key: id, value: encodeCounts(count) },
    ]);
    this.ctx.emit('memberStatus', { id, conv: entry.conv, user, status });
    const all = recipients.size;
    if (all > 0 && count.read >= all) await this.move(entry, 'read');
    else if (all > 0 && count.delivered >= all) await this.move(entry, 'delivered');
  }

  /** The recipients recorded when a group message was sent, cached for the receipts that follow. */
  async recipientsOf(id: string): Promise<Set<string>> {
    let set = this.recipientCache.get(id);
    if (!set) {
      const raw = await this.ctx.store.getState(NS_GROUP_SEND, id);
      set = new Set(raw ? decodeRecipients(raw) : []);
      if (this.recipientCache.size >= RECIPIENT_CACHE) {
        this.recipientCache.delete(this.recipientCache.keys().next().value as string);
      }
      this.recipientCache.set(id, set);
    }
    return set;
  }

  /** Whether this device's message `e` may have reached `user`: its 1:1 peer, or a member (see below). */
  async reached(e: OutboxEntry, user: string): Promise<boolean> {
    if (e.kind !== 'msg') return false;
    return isGroupId(e.to) ? this.mayHaveReceived(e.id, e.to, user) : e.to === user;
  }

  /**
   * Whether a user may have been a member when this device's group message committed: one of
   * its recipients at send time, or added to the group after that (it may have been removed
   * again since; a user removed before the send gets nothing).
   */
  private async mayHaveReceived(id: string, group: string, user: string): Promise<boolean> {
    if ((await this.recipientsOf(id)).has(user)) return true;
    const sent = await this.ctx.store.getState(NS_GROUP_SEND_VER, id);
    const joined = await this.ctx.store.getState(NS_GROUP_JOINED, pairKey(group, user));
    return sent !== undefined && joined !== undefined && decodeNumber(joined) > decodeNumber(sent);
  }

  /** The "message info" view of a message this device sent (see `PostboxClient.messageInfo`). */
  async info(id: string): Promise<MessageInfo | undefined> {
    const entry = await this.ctx.store.outgoing(id);
    if (!entry || entry.kind !== 'msg') return undefined;
    const info = withFailure<MessageInfo>({ id, conv: entry.conv, status: entry.status }, entry);
    if (!isGroupId(entry.conv)) return info;
    info.recipients = [...(await this.recipientsOf(id))];
    const prefix = pairKey(id, '');
    info.members = (await this.ctx.store.listState(NS_MEMBER_STATUS, prefix)).map((e) => ({
      user: e.key.slice(prefix.length),
      status: MEMBER_RECEIPT_NAME[e.value[0]!] as MemberReceipt,
    }));
    return info;
  }
}
