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
  GapEvent,
  MemberStatus,
  MessageInfo,
  PresenceChange,
  ReceivedMessage,
  SendOptions,
  StatusChange,
  TypingChange,
} from './types.js';
export type { GroupChangeEvent, GroupMemberView, GroupView } from './groups.js';
export type { ConversationSummary, HistoryMessage, HistoryOptions } from './history.js';
export { MAX_HISTORY_PAGE } from './history.js';
export { nextStatus } from './status.js';
export { DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS } from './reconnect.js';
export type { ConnectedOptions } from './reconnect.js';
