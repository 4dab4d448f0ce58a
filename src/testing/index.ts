/**
 * Test kit for postbox and for integrators: conformance suites, virtual clock, simulator.
 * @packageDocumentation
 */
export * from './conformance.js';
export * from './server-store-conformance.js';
export { WriteFaults } from './server-store-faults.js';
export * from './server-store-quotas.js';
export * from './client-store-conformance.js';
export * from './crypto-conformance.js';
export * from './cluster-conformance.js';
export * from './transport-conformance.js';
export { VirtualClock } from './virtual-clock.js';
export { runSimulation } from './simulator.js';
export type { SimClusterNode, SimulationOptions, SimulationResult } from './simulator.js';
export * from './blob-store-conformance.js';
