/**
 * Test kit for postbox and for integrators: conformance suites, virtual clock, simulator.
 * @packageDocumentation
 */
export {};
