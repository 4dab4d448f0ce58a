/**
 * Where the plain and the encrypted paths differ, as one interface: a *stage* seals what goes
 * out and opens what comes in. The engine picks one at construction (plain.ts or sealed.ts), so
 * no other part branches on encryption.
 * @packageDocumentation
 */
import type { MsgFrame, PostboxError } from '../protocol/index.js';
import type { Me } from './context.js';
import type { KeyWait } from './key-wait.js';
import type { OutboxEntry } from './store.js';

/** The plain or the sealing stage of a client. */
export interface Stage {
  /** Sends held until their recipient has keys (key-wait.ts): the sealing stage's only. */
  readonly keyWait: KeyWait | undefined;
  /** Writes an outbox item's frame under request `r`, in outbox order. */
  send(entry: OutboxEntry, r: number): void;
  /** A delivered message entry (this device has its identity): accepted through the inbound path. */
  open(f: MsgFrame, me: Me): void;
  /** A send refused for its device list, which this stage corrects itself: true when it did. */
  refused(id: string, r: number, error: PostboxError): boolean;
  /** Someone left (or was removed from) a group this user is still in. */
  membersLeft(group: string): Promise<void>;
  /** The server accepted this session. */
  welcome(me: Me): void;
  /** The server's key directory runs low on this device's one-time prekeys. */
  keysLow(preKeys: number, kyberPreKeys: number): void;
  /** A peer device's safety number (undefined without encryption). */
  safetyNumber(user: string, device: string): Promise<string | undefined>;
  /** Marks a peer device's identity verified (false without encryption). */
  verify(user: string, device: string): Promise<boolean>;
}
