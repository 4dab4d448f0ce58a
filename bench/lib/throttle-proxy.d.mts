/** A counting, throttling, cutting TCP proxy (see throttle-proxy.mjs). */
export interface ThrottleProxy {
  port: number;
  up: number;
  down: number;
  connections: number;
  cuts: number;
  cutAtUp: number | undefined;
  onCut: (() => number | undefined) | undefined;
  cutAll(): void;
  close(): Promise<void>;
}
export function startThrottleProxy(options: {
  target: number;
  bps?: number;
  rttMs?: number;
  piece?: number;
}): Promise<ThrottleProxy>;
