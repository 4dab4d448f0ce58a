/**
 * The store kit (`postbox/server/store-kit`): the rules of the {@link ServerStore} contract as
 * plain functions, for writing a store of your own (DynamoDB, Cassandra, FoundationDB, a file)
 * without writing the rules again. The three built-in stores decide with these same functions;
 * the memory store (`src/server/stores/memory.ts`) imports its rules from this module alone and
 * is the worked example (docs/adapters.md, "Writing a store with the kit").
 *
 * **What the kit decides**, from what your store reads:
 * - an append item's refusals and targets: {@link planMessage} (1:1, group and end-to-end
 *   encrypted messages, with the device-list check), {@link planReceipt} (with
 *   {@link receiptIds}: which ids of a read receipt count), {@link placeMessage} (the inbox
 *   quotas: which full devices a message in a sequence skips, or `inbox_full`);
 * - a membership change: {@link planChange} (validation, the event, the group after it),
 *   {@link planInvites} (pending invites), {@link changeTargets} (who gets which form),
 *   {@link joinSnapshot} and {@link snapshotOf} (what a newly added device learns),
 *   {@link membershipMarks} (the consent marks a change leaves);
 * - statuses: {@link tellSender} (the first of a recipient user's entries of a message to leave
 *   its inbox, acked or expired, tells the sender user once, grouped per (sender, recipient)
 *   pair in a {@link Groups} map: one status entry per group to every device of its user);
 * - gap notices: {@link GapCollector} (what an expiry step tells each device it dropped),
 *   {@link extendFullNotices} (a full device's one `inbox_full` notice);
 * - keys and users: {@link uploadKind}, {@link claimedUsers}, {@link notRegistered},
 *   {@link keysAfter}, {@link preKeyQuotaError}, {@link PENDING_DEVICE} and its helpers;
 * - quotas: {@link resolveQuotas}, {@link overGroupQuota}, {@link actionWindow}.
 *
 * **What your store does** (its storage driver's part, which the kit cannot do for it): answer
 * the four questions of {@link AppendReads} synchronously (an asynchronous backend loads what
 * {@link batchReads} lists for a whole batch first, then plans: the PostgreSQL store works that
 * way, with its own reads);
 * keep every write of one item in one atomic unit (or a whole batch:
 * `StoreCapabilities.atomicBatch`) and its own lock order; take each device's offsets from a
 * counter that never skips or reuses one, so that no reader sees offset n+1 committed while n
 * may still come; store a body once and release it with its last entry; keep the durable
 * records the rules ask about (dedupe keys, who was told, consents).
 * `serverStoreConformance` in `postbox/testing` checks the result, by capability and with a fault
 * hook.
 *
 * **Or let the kit run all of it**: for an engine reachable synchronously (maps, better-sqlite3,
 * LMDB), {@link driverStore} is a whole `ServerStore` over a {@link StoreDriver} that only keeps
 * records in keyed tables and applies a call's writes all or nothing; offsets, usage, releases,
 * statuses, expiry, the pending inbox and key claims are then the kit's too. The memory store is
 * `driverStore` over maps.
 *
 * The functions are pure (no I/O, no clock) and take the store's own device objects (a row with
 * its id, or an address) and hand the same objects back, so a store copies nothing into another
 * shape. They change with the {@link ServerStore} contract they implement.
 * @packageDocumentation
 */
export type { ServerStore } from './store.js';
export { driverStore, type DriverStoreOptions } from './stores/driver-store.js';
export { backendDriver, type BackendDriverOptions, type RemoteBackend } from './stores/backend-driver.js';
export type {
  DriverEntry,
  DriverGroup,
  DriverInbox,
  DriverKeys,
  DriverMessage,
  DriverPreKey,
  DriverRemote,
  DriverSignedKey,
  DriverTable,
  ExpiringTable,
  InboxHead,
  SentAt,
  StoreDriver,
  StoredEvent,
} from './stores/driver.js';
export {
  addressOf,
  batchReads,
  changeTargets,
  placeMessage,
  planMessage,
  planReceipt,
  tellSender,
  type AppendReads,
  type BatchReads,
  type ChangeTargets,
  type MessagePlan,
  type Placement,
  type ReceiptPlan,
} from './stores/planner.js';
export {
  joinSnapshot,
  membershipMarks,
  NotifySet,
  planChange,
  receiptIds,
  snapshotOf,
  type ChangePlan,
  type Groups,
  type GroupView,
  type SentRecord,
} from './stores/relational.js';
export { planInvites, type InvitePlan, type PendingInvites } from './stores/invites.js';
export { extendFullNotices, GapCollector, type DroppedMessage } from './stores/gap-notices.js';
export {
  claimedUsers,
  notRegistered,
  uploadKind,
  type KeyedDevice,
  type Refusal,
} from './stores/directory.js';
export { assertNotPending, isPendingDevice, PENDING_DEVICE, realDevices } from './users.js';
export {
  actionWindow,
  keysAfter,
  overGroupQuota,
  preKeyQuotaError,
  resolveQuotas,
  type InboxUsage,
  type StoreQuotas,
} from './quotas.js';
