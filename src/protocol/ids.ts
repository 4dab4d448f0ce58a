import * as z from 'zod/mini';
import { PostboxError } from './errors.js';

/**
 * The one rule for user, device and group ids, wherever an id enters: frame fields, what the
 * app's `authenticate` hook returns, token claims, server and client APIs, the CLI.
 *
 * User and device ids are opaque, case-sensitive strings of ASCII letters, digits and
 * `. _ - : @ +` — enough for usernames, e-mail addresses, phone numbers (`+15551234567`), UUIDs,
 * ULIDs and base64url — and nothing else: no control characters (a NUL once let two devices
 * share one session key), no spaces, no `/` (the separator of dev credentials), no Unicode
 * (look-alike and invisible characters would give one name two ids), and no `#`, which starts
 * every group id, so a user can never pose as a group in a conversation list.
 */

/** Characters of user and device ids, as a regular-expression class body. */
const ID_CHARS = 'A-Za-z0-9._:@+\\-';

/** Longest user id, in characters. */
export const MAX_USER_ID_CHARS = 128;
/** Longest device id, in characters. */
export const MAX_DEVICE_ID_CHARS = 64;
/** Longest group id, in characters (`#` included). */
export const MAX_GROUP_ID_CHARS = 64;

const USER_ID = new RegExp(`^[${ID_CHARS}]{1,${MAX_USER_ID_CHARS}}$`);
const DEVICE_ID = new RegExp(`^[${ID_CHARS}]{1,${MAX_DEVICE_ID_CHARS}}$`);
/** Group ids are `#` then a tighter alphabet, as before the user-id rule existed. */
const GROUP_ID = new RegExp(`^#[0-9A-Za-z_-]{1,${MAX_GROUP_ID_CHARS - 1}}$`);

/** What a valid user id is, for error messages and docs. */
export const USER_ID_RULE = `user id: 1-${MAX_USER_ID_CHARS} of A-Z a-z 0-9 . _ - : @ +`;
/** What a valid device id is. */
export const DEVICE_ID_RULE = `device id: 1-${MAX_DEVICE_ID_CHARS} of A-Z a-z 0-9 . _ - : @ +`;
/** What a valid group id is. */
export const GROUP_ID_RULE = `group id: # then 1-${MAX_GROUP_ID_CHARS - 1} of A-Z a-z 0-9 _ -`;

/** Whether `v` is a valid user id. */
export const isUserId = (v: unknown): boolean => typeof v === 'string' && USER_ID.test(v);
/** Whether `v` is a valid device id. */
export const isDeviceId = (v: unknown): boolean => typeof v === 'string' && DEVICE_ID.test(v);
/** Whether `v` is a valid group id (and so names a group conversation rather than a user). */
export const isGroupId = (v: unknown): boolean => typeof v === 'string' && GROUP_ID.test(v);

/** Schema of a user id. */
export const userIdSchema = z.string().check(z.regex(USER_ID, USER_ID_RULE));
/** Schema of a device id. */
export const deviceIdSchema = z.string().check(z.regex(DEVICE_ID, DEVICE_ID_RULE));
/** Schema of a group id. */
export const groupIdSchema = z.string().check(z.regex(GROUP_ID, GROUP_ID_RULE));
/** Schema of a conversation: a user id or a group id (which one, the frame's `g` says). */
export const conversationIdSchema = z
  .string()
  .check(z.refine((v) => USER_ID.test(v) || GROUP_ID.test(v), `${USER_ID_RULE}, or a ${GROUP_ID_RULE}`));

function check(ok: boolean, rule: string, what: string | undefined): void {
  if (!ok)
    throw new PostboxError('invalid_frame', what ? `${what}: not a valid ${rule}` : `not a valid ${rule}`);
}

/** Throws `invalid_frame` unless `v` is a valid user id; `what` names the argument. */
export function assertUserId(v: unknown, what?: string): asserts v is string {
  check(isUserId(v), USER_ID_RULE, what);
}

/** Throws `invalid_frame` unless `v` is a valid device id. */
export function assertDeviceId(v: unknown, what?: string): asserts v is string {
  check(isDeviceId(v), DEVICE_ID_RULE, what);
}

/** Throws `invalid_frame` unless `v` is a valid group id. */
export function assertGroupId(v: unknown, what?: string): asserts v is string {
  check(isGroupId(v), GROUP_ID_RULE, what);
}
