/**
 * postbox: embeddable messaging with store-and-forward delivery. The root entry holds what every
 * side shares (errors, codes, protocol version); the engines and adapters live in subpaths:
 * `postbox/client`, `postbox/server`, `postbox/transport/memory`, `postbox/server/memory`,
 * `postbox/client/memory`, `postbox/testing`.
 * @packageDocumentation
 */
export {
  CLOSE_CODES,
  ERROR_CODES,
  ERROR_CODE_LIST,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  isDeviceId,
  isGroupId,
  isPostboxError,
  isRetryable,
  isUserId,
} from './protocol/index.js';
export type { ErrorCode } from './protocol/index.js';
