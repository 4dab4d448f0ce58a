/**
 * The newest protocol version this build speaks. Versions: 1, the first; 2 adds the `gap` frame
 * (the server says which messages it dropped; a version-1 session never gets one, see
 * {@link GAP_FRAME_VERSION}); 3 adds its reason `f`, inbox full ({@link INBOX_FULL_GAP_VERSION}).
 */
export const PROTOCOL_VERSION = 3;
/**
 * The first version whose clients get `gap` frames. For an older session the server acks the
 * notice itself instead of sending it: such a client would reject the unknown frame and reconnect
 * forever, and its gap timeout still reports the hole (without a reason).
 */
export const GAP_FRAME_VERSION = 2;
/**
 * The first version whose clients get `gap` frames with the reason `f` (messages skipped because
 * the device's inbox was full). For an older session the server acks such a notice itself, as
 * for a version-1 session and any gap notice: its client would refuse the unknown reason.
 */
export const INBOX_FULL_GAP_VERSION = 3;
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
