/**
 * The postbox client engine and its storage contract. Browser-safe: no Node built-ins.
 * @packageDocumentation
 */
export type * from './store.js';
export { createClient, isGroupId, PostboxClient } from './engine.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  MemberStatus,
  MessageInfo,
  PresenceChange,
  ReceivedMessage,
  SendOptions,
  StatusChange,
  TypingChange,
} from './types.js';
export type { GapEvent, GapReason } from './gaps.js';
export type { GroupChangeEvent, GroupMemberView, GroupView } from './groups.js';
export type { GroupInvite } from './invites.js';
export type { ConversationSummary, HistoryMessage, HistoryOptions } from './history.js';
export { MAX_HISTORY_PAGE } from './history.js';
export { nextStatus } from './status.js';
export { DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS } from './reconnect.js';
export type { ConnectedOptions } from './reconnect.js';
export { DEFAULT_KEY_WAIT_MS } from './key-wait.js';
export type { KeysReadyOptions } from './key-wait.js';
