// Latency at light, paced load (issue 23): the latency scenario's open-loop machinery at rates far
// below saturation, with one message's timeline traced per rate (see latency.mjs).
export { run } from './latency.mjs';
