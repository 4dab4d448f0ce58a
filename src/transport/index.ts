/**
 * Transport contracts shared by every transport.
 * @packageDocumentation
 */
export type { Connection, ConnectionHandlers, ClientTransport, ServerTransport } from './types.js';
