import { describe, expect, it } from 'vitest';
import { memberStep, nextStatus } from '../src/client/status.js';
import { TRANSITIONS } from '../src/client/connection.js';
import { conversationOf, frameOf, inboundOf } from '../src/client/wire.js';
import { encodeChange } from '../src/client/groups.js';
import type { OutboxEntry } from '../src/client/store.js';

// The one rule that names a delivered message's conversation, for every kind of delivery this
// device sees (me = alice). The own-other-device resend answer is the case no other test covered.
const CONVERSATIONS: Array<[string, { from: string; to: string | undefined; group: boolean }, string]> = [
  ['a 1:1 message from bob is in the chat with bob', { from: 'bob', to: 'alice', group: false }, 'bob'],
  [
    'a 1:1 message from bob with no `to` is in the chat with bob',
    { from: 'bob', to: undefined, group: false },
    'bob',
  ],
  [
    "a copy of alice's own message to bob (from her other device) is in the chat with bob",
    { from: 'alice', to: 'bob', group: false },
    'bob',
  ],
  [
    "a copy of alice's note to herself is in her own chat",
    { from: 'alice', to: undefined, group: false },
    'alice',
  ],
  ['a group message is in the group', { from: 'bob', to: '#club', group: true }, '#club'],
  [
    "alice's own group message from her other device is in the group",
    { from: 'alice', to: '#club', group: true },
    '#club',
  ],
  // Resend answers carry the original's `to` (content type 3).
  [
    "a resend answer from alice's other device, of her message to bob, is in the chat with bob",
    { from: 'alice', to: 'bob', group: false },
    'bob',
  ],
  [
    "a resend answer from alice's other device, of a message to herself, is in her own chat",
    { from: 'alice', to: undefined, group: false },
    'alice',
  ],
  [
    'a resend answer from bob of his message to alice is in the chat with bob',
    { from: 'bob', to: 'alice', group: false },
    'bob',
  ],
  ['a resend answer of a group message is in the group', { from: 'bob', to: '#club', group: true }, '#club'],
  // Typing notices: 1:1 ones carry no `to`.
  ['a typing notice from bob is in the chat with bob', { from: 'bob', to: undefined, group: false }, 'bob'],
];

describe('one rule names the conversation of a delivered message', () => {
  for (const [name, f, conv] of CONVERSATIONS) {
    it(name, () => expect(conversationOf(f.from, f.to, f.group, 'alice')).toBe(conv));
  }

  it("the stored copy of alice's own message is addressed to its peer and never unread", () => {
    const m = inboundOf('bob', 'alice', 'id1', 'alice', 'tablet', 3, 10, new Uint8Array([1]));
    expect(m).toMatchObject({ conv: 'bob', to: 'bob', read: true, held: false });
  });

  it("a peer's message is addressed to this user and unread; a group's to the group", () => {
    expect(inboundOf('bob', 'alice', 'i', 'bob', 'p', 1, 1, new Uint8Array())).toMatchObject({
      to: 'alice',
      read: false,
    });
    expect(inboundOf('#g', 'alice', 'i', 'bob', 'p', 1, 1, new Uint8Array())).toMatchObject({
      to: '#g',
      read: false,
    });
  });
});

describe('one builder makes the frame an outbox item goes out as', () => {
  const base = { id: 'm1', conv: 'bob', createdAt: 1, status: 'pending' } as const;
  it('a 1:1 message is a send with its sequence number and body', () => {
    const e: OutboxEntry = { ...base, kind: 'msg', to: 'bob', seq: 4, body: new Uint8Array([7]) };
    expect(frameOf(e, 9)).toEqual({ t: 'send', r: 9, id: 'm1', to: 'bob', seq: 4, b: new Uint8Array([7]) });
  });
  it('a group message is marked as one, and may carry a ciphertext instead of its body', () => {
    const e: OutboxEntry = { ...base, kind: 'msg', to: '#g', conv: '#g', seq: 1, body: new Uint8Array([7]) };
    expect(frameOf(e, 2, new Uint8Array([8]))).toEqual({
      t: 'send',
      r: 2,
      id: 'm1',
      to: '#g',
      seq: 1,
      b: new Uint8Array([8]),
      g: true,
    });
  });
  it('a membership change is a grp frame', () => {
    const e: OutboxEntry = {
      ...base,
      kind: 'group',
      to: '#g',
      conv: '#g',
      body: encodeChange({ op: 'add', m: ['carol'] }),
    };
    expect(frameOf(e, 3)).toEqual({ t: 'grp', r: 3, id: 'm1', g: '#g', op: 'add', m: ['carol'] });
  });
  it('read receipts are an rcpt frame', () => {
    const e: OutboxEntry = { ...base, kind: 'read', to: 'bob', ids: ['a', 'b'] };
    expect(frameOf(e, 4)).toEqual({ t: 'rcpt', r: 4, id: 'm1', to: 'bob', ids: ['a', 'b'] });
  });
});

describe('statuses only move forward', () => {
  it("a member's receipt counts it delivered once and read once, whatever the order", () => {
    expect(memberStep(undefined, 'read')).toEqual({ next: 'read', delivered: 1, read: 1 });
    expect(memberStep('delivered', 'read')).toEqual({ next: 'read', delivered: 0, read: 1 });
    expect(memberStep('read', 'delivered')).toBeUndefined();
    expect(memberStep('delivered', 'expired')).toBeUndefined();
    expect(memberStep('expired', 'expired')).toBeUndefined();
  });
  it("a member's expired copy may still be delivered by another of its devices (not so for a 1:1 status)", () => {
    expect(memberStep('expired', 'delivered')).toEqual({ next: 'delivered', delivered: 1, read: 0 });
    expect(nextStatus('expired', 'delivered')).toBe('expired');
  });
});

describe('the connection state machine', () => {
  it('closed is left only for connecting, and every state can close', () => {
    expect(TRANSITIONS.closed).toEqual(['connecting']);
    for (const [from, to] of Object.entries(TRANSITIONS))
      if (from !== 'closed') expect(to).toContain('closed');
  });
  it('open is reached only through a handshake', () => {
    const into = Object.entries(TRANSITIONS)
      .filter(([, to]) => to.includes('open'))
      .map(([from]) => from);
    expect(into.sort()).toEqual(['handshaking', 'linking']);
  });
});
