/**
 * The postbox server engine and its storage contract.
 * @packageDocumentation
 */
export type * from './store.js';
export { createServer, PostboxServer } from './engine.js';
export type { Authenticate, AuthResult, Logger, ServerEvents, ServerOptions } from './engine.js';
