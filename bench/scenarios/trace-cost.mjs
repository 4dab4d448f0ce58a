// trace-cost: the saturation run, unchanged, against servers with the delivery trace on and off
// (run.mjs picks the systems); the difference in server CPU per message is what the trace costs.
export { run } from './saturation.mjs';
