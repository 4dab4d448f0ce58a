/**
 * The postbox server engine and its storage contract.
 * @packageDocumentation
 */
export type * from './store.js';
