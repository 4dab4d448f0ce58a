/** The newest protocol version this build speaks. */
export const PROTOCOL_VERSION = 1;
/** The oldest protocol version this build still accepts. */
export const MIN_PROTOCOL_VERSION = 1;

/**
 * Picks the highest version in both ranges, or `undefined` when they do not overlap.
 */
export function negotiateVersion(
  client: readonly [number, number],
  server: readonly [number, number] = [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION],
): number | undefined {
  const hi = Math.min(client[1], server[1]);
  const lo = Math.max(client[0], server[0]);
  return hi >= lo ? hi : undefined;
}
