// What one message's life costs the client (issue 16): the latency scenario's paced open-loop
// load (paced by timers, not a spin: see timerPacing), whose every rate also reports the CPU
// (user + system, read from /proc) of the load process — N full client engines — and of the
// server, per message life ended in the window. Compared with socket.io-client (emitWithAck,
// plus a delivered event relayed back to the sender) in the same run; p50/p99 send→delivered
// come with it (see latency.mjs).
export { run } from './latency.mjs';
