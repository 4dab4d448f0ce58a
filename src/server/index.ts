/**
 * The postbox server engine and its storage contract.
 * @packageDocumentation
 */
export type * from './store.js';
export { createServer, PostboxServer } from './engine.js';
export { PENDING_DEVICE } from './users.js';
export type { Authenticate, AuthResult, Logger, ServerEvents, ServerOptions } from './options.js';
export type { StoreHealth } from './health.js';
export { memoryTraceStore } from './trace.js';
export type { MemoryTraceOptions, TraceEvent, TraceEventKind, TraceStore } from './trace.js';
export {
  DEFAULT_TOKEN_TTL_MS,
  insecureDevAuthenticator,
  signToken,
  tokenAuthenticator,
  verifyToken,
} from './auth.js';
export type { TokenClaims, TokenRequest } from './auth.js';
export type { PushProvider, PushToken, WakeReason } from './push/types.js';
export { webhookPush } from './push/webhook.js';
export { noMetrics } from './metrics.js';
export type { ServerMetrics } from './metrics.js';
export type { WebhookPushOptions } from './push/webhook.js';
export { DEFAULT_QUOTAS } from './quotas.js';
export type { StoreQuotas } from './quotas.js';
export { DEFAULT_COST_BUDGETS, FRAME_COSTS } from './costs.js';
export type { Budget, CostBudgetOptions } from './costs.js';
export type { GroupConsent, GroupConsentRule } from './group-consent.js';
