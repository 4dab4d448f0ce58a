/**
 * The postbox client engine and its storage contract.
 * @packageDocumentation
 */
export type * from './store.js';
