/**
 * The postbox wire protocol: frame schemas, codec, version negotiation and error codes.
 * @packageDocumentation
 */
export * from './errors.js';
export * from './frames.js';
export * from './codec.js';
export * from './version.js';
export * from './ids.js';
export type * from './keys.js';
