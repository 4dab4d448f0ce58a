/**
 * The postbox client engine and its storage contract. Browser-safe: no Node built-ins.
 * @packageDocumentation
 */
export type * from './store.js';
export { createClient, PostboxClient } from './engine.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  GapEvent,
  ReceivedMessage,
  StatusChange,
} from './engine.js';
export { nextStatus } from './status.js';
