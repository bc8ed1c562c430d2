/**
 * Admin API v1, identity (issue 12): consumers, their API keys, groups,
 * grants and the identity store's audit log, over the store of the admin
 * thread's IdentityService (admin/identity/). Registered in endpoints.ts's
 * table like upstreams.ts.
 *
 *   POST   /admin/consumers                  201 {consumer, keys: [{key, ...}]}
 *   GET    /admin/consumers?tenant=          a page
 *   GET|PATCH|DELETE /admin/consumers/{id}
 *   POST   /admin/consumers/{id}/keys        201 {key, ...}: the plaintext key, this once
 *   GET    /admin/keys?consumer=             a page
 *   GET|PATCH /admin/keys/{id}
 *   POST   /admin/keys/{id}/rotate           201 {key, ..., old: {...}}
 *   POST   /admin/keys/{id}/revoke           200
 *   POST|GET /admin/groups, GET|PATCH|DELETE /admin/groups/{id}
 *   POST|GET /admin/grants?subject=, GET|DELETE /admin/grants/{id}
 *   GET    /admin/identity/audit             the store's own audit log
 *
 * Conventions, as the rest of the API: times in answers are ISO-8601 UTC
 * strings (the store keeps ms; `expiresAt` in a request may be either);
 * lists are cursor paginated (`?limit`, `?cursor`, `next`); a body that is
 * not what the endpoint takes is a 422 invalid_body whose `errors` name each
 * problem by path (`restrictions.cidrs[0]`, `keys[1].name`, an unknown field
 * by its own path). Key hashes are never answered: key records are rebuilt
 * field by field (keyView), and the plaintext key appears only in the 201 of
 * consumer creation, key creation and rotation.
 *
 * Text a person reads back (names, descriptions, tenant, plan, routeId,
 * origins) refuses control characters (NO_CONTROL); every string of a body
 * (metadata keys and values and scopes included) must be well-formed
 * Unicode (no lone surrogate such as "\ud800", which the stores could not
 * keep unchanged: illFormedProblems); error messages repeat a client's value
 * at most MAX_ECHO_CHARS characters of it, escaped (echo).
 * A consumer's `revoked` status is final (409 on any way back, and a
 * consumer created revoked cannot have keys: 409).
 *
 * Every write is audited twice: by the store (GET /admin/identity/audit,
 * actor = the admin token's name, in the same atomic write) and in the
 * admin audit log (GET /admin/audit, admin.auditLog) like config writes,
 * refusals included.
 *
 * Store errors (admin/identity/store/types.ts StoreError) map to: not_found
 * 404, conflict 409, invalid 422 invalid_body (what was sent is at fault),
 * bad_cursor 400 invalid_query (parameter cursor), schema 500,
 * unavailable 503 (the message says what to do).
 */
import { isIP } from 'node:net';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { parseDuration } from '../../common/config/duration.js';
import { SCOPE_PATTERN } from '../../common/config/identity.js';
import type { AdminContext } from '../context.js';
import {
  type ApiKeyRecord, type AuditEntry, type Consumer, type CreatedKey, type Grant, type Group, type IdentityStore, type KeyRestrictions,
  type Page, ID_PATTERN, MAX_PAGE_LIMIT, MAX_TIME_ISO, MAX_TIME_MS, StoreError, requireNotRevoked,
} from '../identity/store/types.js';
import type { Endpoint, HandlerResult } from './endpoints.js';
import { AdminErrors, ApiError } from './errors.js';
import * as S from './schemas.js';
import type { Schema } from './schemas.js';

// -- limits -------------------------------------------------------------------

/** Largest body of an identity write (a consumer with its keys and metadata). */
export const IDENTITY_BODY_MAX_BYTES = 65_536; // 64 KiB
/** Keys created with a consumer in one request. */
export const MAX_KEYS_PER_CREATE = 20;
/** Entries of scopes, groups, methods, cidrs, origins, timeWindows. */
export const MAX_LIST_ITEMS = 100;
/** Metadata entries of a consumer. */
export const MAX_METADATA_ENTRIES = 64;
/** Length of names, tenants, plans, scopes, metadata strings. */
export const MAX_TEXT = 256;
/** Longest rotation grace a request may ask for: 366 days. */
export const MAX_GRACE_MS = 366 * 86_400_000;
/** Latest expiresAt a request may give: MAX_TIME_MS of the store, 9999-12-31T23:59:59.999Z. */
export const MAX_EXPIRES_MS = MAX_TIME_MS;
/** Longest group description. */
export const MAX_DESCRIPTION = 2048;
/** Longest piece of a client's value an error message repeats; longer values are cut, marked "..." with their length. */
export const MAX_ECHO_CHARS = 64;

// -- echoing client values ----------------------------------------------------

/** Control characters (C0, DEL, C1) and the invisible line and direction changers a terminal or a log viewer may act on. */
const UNSAFE_CHARS = /[\u0000-\u001F\u007F-\u009F\u200E\u200F\u2028\u2029\u202A-\u202E\u2066-\u2069]/g;
const u4 = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
/** A UTF-16 code unit of a surrogate pair without its other half (not well-formed Unicode; no UTF-8 encodes it). */
const LONE_SURROGATE = /\p{Surrogate}/gu;
/** `text` with control characters and lone surrogates escaped as \uXXXX. */
const escapeUnsafe = (text: string): string => text.replace(UNSAFE_CHARS, u4).replace(LONE_SURROGATE, u4);

/**
 * A client's value for an error message: JSON-quoted (a string) or as
 * JSON, with every control character escaped (JSON.stringify leaves DEL and
 * C1 raw), and at most MAX_ECHO_CHARS characters of it: a longer one is
 * cut and followed by `... (<n> characters)`.
 */
export function echo(v: unknown): string {
  const text = typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined ? String(v) : (JSON.stringify(v) ?? String(v));
  const chars = Array.from(text);
  const cut = chars.length > MAX_ECHO_CHARS ? chars.slice(0, MAX_ECHO_CHARS).join('') : text;
  const shown = escapeUnsafe(typeof v === 'string' ? JSON.stringify(cut) : cut);
  return chars.length > MAX_ECHO_CHARS ? `${shown}... (${chars.length} characters)` : shown;
}

/** A field name from a body (an unknown field) for a path: unquoted, control characters escaped, cut like echo(). */
function fieldName(name: string): string {
  const chars = Array.from(name);
  const cut = chars.length > MAX_ECHO_CHARS ? `${chars.slice(0, MAX_ECHO_CHARS).join('')}...` : name;
  return escapeUnsafe(cut);
}

/**
 * Text fields shown by the CLI and in logs (names, descriptions, tenant,
 * plan, routeId, origins) refuse control characters: C0 (U+0000-U+001F,
 * tab, CR and LF included), DEL (U+007F) and C1 (U+0080-U+009F).
 */
export const NO_CONTROL = '^[^\\u0000-\\u001F\\u007F-\\u009F]*$';
const CONTROL_RE = /[\u0000-\u001F\u007F-\u009F]/u;

/** String.prototype.isWellFormed (ES2024; Node >= 20): no lone surrogate. */
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();

/**
 * Every string of a request body that is not well-formed Unicode (a lone
 * surrogate, e.g. "\ud800x" in JSON): values and object keys, at any depth,
 * each with its path (`name`, `metadata.<key>`, `keys[0].scopes[1]`).
 * JSON allows such escapes, but the stores write UTF-8, which cannot hold
 * them: the text would come back changed (U+FFFD). Refused instead.
 */
function illFormedProblems(v: unknown, path: string, out: Problem[]): Problem[] {
  if (out.length >= 50) return out;
  const message = (s: string) => {
    const m = /\p{Surrogate}/u.exec(s)!;
    const at = Array.from(s.slice(0, m.index)).length + 1;
    return `must be well-formed Unicode text: found a lone surrogate U+${m[0].charCodeAt(0).toString(16).toUpperCase()} at character ${at} (one half of a UTF-16 pair; send the character itself, or both halves of its \\uXXXX pair)`;
  };
  if (typeof v === 'string') {
    if (!wellFormed(v)) out.push({ path, message: message(v) });
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => illFormedProblems(x, `${path}[${i}]`, out));
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      const at = join(path, fieldName(k));
      if (!wellFormed(k)) out.push({ path: at, message: `the field name ${message(k)}` });
      illFormedProblems(x, at, out);
    }
  }
  return out;
}

/** The message of a NO_CONTROL refusal: which character, where. */
function controlMessage(data: unknown): string {
  const chars = typeof data === 'string' ? Array.from(data) : [];
  const at = chars.findIndex((c) => CONTROL_RE.test(c));
  const found = at === -1 ? '' : `; found U+${chars[at]!.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')} at character ${at + 1}`;
  return `must not contain control characters (U+0000-U+001F, U+007F-U+009F: tab, CR, LF, NUL, ESC...)${found}`;
}

// -- schema helpers -----------------------------------------------------------

/** A schema with a component name (openapi.ts publishes it under components/schemas). */
function named<T extends object>(name: string, schema: T): T {
  S.SCHEMA_NAMES.set(schema, name);
  return schema;
}

const str = (description: string, max = MAX_TEXT): Schema => ({ type: 'string', minLength: 1, maxLength: max, description });
/** A text field of a request: as str, without control characters. */
const text = (description: string, max = MAX_TEXT): Schema => ({ ...str(description, max), pattern: NO_CONTROL });
const time = (description: string): Schema => ({ type: 'string', format: 'date-time', description: `${description} ISO-8601, UTC.` });
const nullableTime = (description: string): Schema => ({ type: ['string', 'null'], format: 'date-time', description: `${description} ISO-8601, UTC; null: none.` });
const nullableStr = (description: string): Schema => ({ type: ['string', 'null'], maxLength: MAX_TEXT, pattern: NO_CONTROL, description });
const list = (items: Schema, description: string): Schema => ({ type: 'array', items, maxItems: MAX_LIST_ITEMS, description });

function obj(properties: Record<string, Schema>, description: string, optional: readonly string[] = []): Schema {
  return { type: 'object', additionalProperties: false, required: Object.keys(properties).filter((k) => !optional.includes(k)), properties, description };
}

const idSchema: Schema = { type: 'string', pattern: ID_PATTERN.source, description: 'Id: 1-128 of [A-Za-z0-9_.:-], starting with a letter or digit.' };
const givenId = (kind: string): Schema => ({ ...idSchema, description: `Optional id of the new ${kind} (1-128 of [A-Za-z0-9_.:-], starting alphanumeric); default a generated, time-ordered one.` });
const STATUS: Schema = { type: 'string', enum: ['active', 'suspended', 'revoked'], description: 'active; suspended (its keys answer 401 consumer_suspended until active again: reversible); revoked (its keys answer 401 key_revoked; final: a revoked consumer cannot become active or suspended again).' };
const metadataSchema: Schema = {
  type: 'object', maxProperties: MAX_METADATA_ENTRIES,
  additionalProperties: { type: ['string', 'number', 'boolean', 'null'], maxLength: MAX_TEXT },
  description: `Free-form labels: up to ${MAX_METADATA_ENTRIES} entries of string, number, boolean or null.`,
};
const scopesSchema = list({ type: 'string', pattern: SCOPE_PATTERN }, 'Scopes the key holds (RFC 6749 scope-tokens: printable ASCII without spaces, quotes or backslashes, e.g. "orders:read"); routes with auth.scopes need every one they list.');
const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const HHMM = '^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$';
const timeWindowIn: Schema = obj({
  days: { type: 'array', items: { type: 'string', enum: DAYS }, minItems: 1, maxItems: 7, uniqueItems: true, description: 'Days the window applies to.' },
  from: { type: 'string', pattern: HHMM, description: 'Start, HH:MM (24 h).' },
  to: { type: 'string', pattern: HHMM, description: 'End, HH:MM, exclusive; before `from`: the window spans midnight.' },
  timeZone: { type: 'string', minLength: 1, maxLength: 64, description: 'IANA time zone, e.g. "Europe/Paris". Default "UTC".' },
}, 'An allowed time window.', ['timeZone']);
const timeWindowOut: Schema = obj({
  days: { type: 'array', items: { type: 'string', enum: DAYS }, description: 'Days.' },
  from: { type: 'string', description: 'Start, HH:MM.' },
  to: { type: 'string', description: 'End, HH:MM, exclusive.' },
  timeZone: { type: 'string', description: 'IANA time zone.' },
}, 'An allowed time window.');
const restrictionsIn: Schema = obj({
  cidrs: list({ type: 'string', minLength: 1, maxLength: 64 }, 'Allowed client addresses, CIDR (IPv4 or IPv6; a bare address is /32 or /128). Empty: any.'),
  timeWindows: list(timeWindowIn, 'Allowed time windows (any one suffices). Empty: any time.'),
  origins: list({ type: 'string', minLength: 1, maxLength: 512, pattern: NO_CONTROL }, 'Allowed Origin / Referer patterns ("https://app.example.com", "https://*.example.com"). Empty: any.'),
}, 'Restrictions: each list that is not empty must be satisfied. Missing lists are empty.', ['cidrs', 'timeWindows', 'origins']);
const restrictionsOut: Schema = obj({
  cidrs: { type: 'array', items: { type: 'string' }, description: 'Allowed CIDRs.' },
  timeWindows: { type: 'array', items: timeWindowOut, description: 'Allowed time windows.' },
  origins: { type: 'array', items: { type: 'string' }, description: 'Allowed Origin / Referer patterns.' },
}, 'Restrictions (empty lists do not restrict).');
const expiresIn: Schema = {
  anyOf: [{ type: 'string', minLength: 1, maxLength: 64 }, { type: 'integer', minimum: 0 }, { type: 'null' }],
  description: `When the key stops working: an ISO-8601 time with a zone ("2027-01-01T00:00:00Z", "2027-01-01T02:00:00+02:00"; a date alone is 00:00 UTC) or whole milliseconds since the epoch; null: never. A real date, in the future, at most ${MAX_TIME_ISO} (${MAX_TIME_MS} ms).`,
};

// -- request bodies -----------------------------------------------------------

const keyIn: Schema = obj({
  id: givenId('key'),
  name: text('Name of the key (what it is for).'),
  scopes: scopesSchema,
  expiresAt: expiresIn,
  restrictions: restrictionsIn,
}, 'A new API key.', ['id', 'scopes', 'expiresAt', 'restrictions']);

const consumerIn: Schema = obj({
  id: givenId('consumer'),
  name: text('Display name.'),
  status: { ...STATUS, description: `${STATUS['description'] as string} Default active.` },
  tenant: nullableStr('Tenant label; null: none.'),
  plan: nullableStr('Rate-limit tier name; null: none.'),
  groups: list(idSchema, 'Ids of existing groups.'),
  metadata: metadataSchema,
  keys: { type: 'array', items: keyIn, maxItems: MAX_KEYS_PER_CREATE, description: `Keys to create with the consumer, in the same atomic write (at most ${MAX_KEYS_PER_CREATE}).` },
}, 'A new consumer.', ['id', 'status', 'tenant', 'plan', 'groups', 'metadata', 'keys']);

const consumerPatch: Schema = {
  ...obj({
    name: text('Display name.'), status: STATUS, tenant: nullableStr('Tenant; null: none.'), plan: nullableStr('Rate-limit tier; null: none.'),
    groups: list(idSchema, 'Ids of existing groups (replaces the list).'), metadata: { ...metadataSchema, description: 'Replaces the metadata.' },
  }, 'Fields to change; the others stay.', ['name', 'status', 'tenant', 'plan', 'groups', 'metadata']),
  minProperties: 1,
};

const keyPatch: Schema = {
  ...obj({
    name: text('Name.'), scopes: { ...scopesSchema, description: 'Scopes (replaces the list).' },
    expiresAt: expiresIn, restrictions: { ...restrictionsIn, description: 'Restrictions (replaces them; missing lists are empty).' },
  }, 'Fields to change; the others stay.', ['name', 'scopes', 'expiresAt', 'restrictions']),
  minProperties: 1,
};

const rotateIn: Schema = obj({
  graceMs: { type: 'integer', minimum: 0, maximum: MAX_GRACE_MS, description: 'How long the old key keeps working, ms (0: it stops now).' },
  grace: { type: 'string', maxLength: 24, pattern: '^[0-9]+(ms|s|m|h|d)$', description: 'The same as a duration: "30d", "12h", "90m", "0s".' },
}, 'Rotation options; default grace identity.rotationGraceMs (30 days).', ['graceMs', 'grace']);

const groupIn: Schema = obj({
  id: givenId('group'), name: text('Display name.'), description: { type: ['string', 'null'], maxLength: MAX_DESCRIPTION, pattern: NO_CONTROL, description: 'What the group is for; null: none.' },
}, 'A new group.', ['id', 'description']);
const groupPatch: Schema = {
  ...obj({ name: text('Display name.'), description: { type: ['string', 'null'], maxLength: MAX_DESCRIPTION, pattern: NO_CONTROL, description: 'Description; null: none.' } }, 'Fields to change.', ['name', 'description']),
  minProperties: 1,
};

const METHOD = { type: 'string', pattern: '^(\\*|[A-Za-z]{1,20})$' };
const subjectSchema: Schema = obj({
  kind: { type: 'string', enum: ['consumer', 'group'], description: 'A consumer, or a group (every member).' },
  id: idSchema,
}, 'Who is granted.');
const grantIn: Schema = obj({
  id: givenId('grant'),
  subject: subjectSchema,
  routeId: text('Id of the route (routes[].id).', 128),
  methods: { type: 'array', items: METHOD, minItems: 1, maxItems: 20, description: 'Methods granted (case-insensitive), or ["*"] (the default): any.' },
}, 'A new grant.', ['id', 'methods']);

// -- answers ------------------------------------------------------------------

const consumerOut = named('IdentityConsumer', obj({
  id: str('Consumer id.'), name: str('Display name.'), status: STATUS,
  tenant: { type: ['string', 'null'], description: 'Tenant; null: none.' }, plan: { type: ['string', 'null'], description: 'Rate-limit tier; null: none.' },
  groups: { type: 'array', items: { type: 'string' }, description: 'Group ids, sorted.' },
  metadata: { type: 'object', additionalProperties: { type: ['string', 'number', 'boolean', 'null'] }, description: 'Labels.' },
  createdAt: time('Created.'), updatedAt: time('Last changed.'),
}, 'A consumer: who calls the API.'));

const keyProps: Record<string, Schema> = {
  id: str('Key id (not the key).'),
  consumerId: str('The consumer it belongs to.'),
  name: str('Name.'),
  prefix: str('What may be shown of the key: "tp_<env>_" and its first 4 random characters.'),
  scopes: { type: 'array', items: { type: 'string' }, description: 'Scopes.' },
  restrictions: restrictionsOut,
  expiresAt: nullableTime('When it stops working.'),
  createdAt: time('Created.'),
  lastUsedAt: nullableTime('Last accepted request (written in batches: up to identity.lastUsedFlushMs late).'),
  status: { type: 'string', enum: ['active', 'revoked'], description: 'revoked: refused everywhere (key_revoked). Expiry and rotation grace are times.' },
  revokedAt: nullableTime('When it was revoked.'),
  rotatedFrom: { type: ['string', 'null'], description: 'The key this one replaced; null.' },
  graceUntil: nullableTime('A rotated key: it works until then, its answers carrying Deprecation and Sunset headers.'),
  rotatedAt: nullableTime('A rotated key: when it was rotated (the date its Deprecation header gives).'),
};
const keyOut = named('IdentityApiKey', obj(keyProps, 'An API key, without the key itself (never shown again) or its hash (never shown).'));
const newKeyOut = named('IdentityNewApiKey', obj({
  key: { type: 'string', description: 'The plaintext key, tp_<env>_<random>_<checksum>. Shown in this answer only: store it now.' },
  ...keyProps,
}, 'A key just made, with its plaintext (this once).'));
const rotatedOut = named('IdentityRotatedKey', obj({
  key: { type: 'string', description: 'The new plaintext key. Shown in this answer only.' },
  ...keyProps,
  old: keyOut,
}, 'The new key (with its plaintext, this once) and the old one, now with graceUntil.'));
const consumerCreated = named('IdentityConsumerCreated', obj({
  consumer: consumerOut,
  keys: { type: 'array', items: newKeyOut, description: 'The keys created with it, with their plaintext (this once).' },
}, 'A consumer just created.'));

const groupOut = named('IdentityGroup', obj({
  id: str('Group id.'), name: str('Name.'), description: { type: ['string', 'null'], description: 'Description; null.' },
  createdAt: time('Created.'), updatedAt: time('Last changed.'),
}, 'A group of consumers (grants to a group hold for every member).'));

const grantProps: Record<string, Schema> = {
  id: str('Grant id.'),
  subject: obj({ kind: { type: 'string', enum: ['consumer', 'group'], description: 'Kind.' }, id: { type: 'string', description: 'Its id.' } }, 'Who is granted.'),
  routeId: str('Route id.'),
  methods: { type: 'array', items: { type: 'string' }, description: 'Methods (upper case), or ["*"].' },
  createdAt: time('Created.'),
};
const grantOut = named('IdentityGrant', obj(grantProps, 'A grant: calls to a route (routes whose auth says grants: required) with these methods.'));
const warningOut = named('IdentityWarning', obj({
  path: { type: 'string', description: 'The field concerned.' },
  message: { type: 'string', description: 'What is probably wrong.' },
}, 'Accepted, but probably not what was meant.'));
const grantCreated = named('IdentityGrantCreated', obj({
  ...grantProps,
  warnings: { type: 'array', items: warningOut, description: 'Accepted, but probably not what was meant: a routeId the running config does not have (the grant still applies once such a route exists).' },
}, 'A grant just created.'));

const consumerDeleted = named('IdentityConsumerDeleted', obj({
  consumer: consumerOut,
  keys: { type: 'array', items: keyOut, description: 'Its keys, removed with it (refused at once everywhere).' },
  grants: { type: 'array', items: grantOut, description: 'Its grants, removed with it.' },
}, 'What was removed.'));
const groupDeleted = named('IdentityGroupDeleted', obj({
  group: groupOut,
  grants: { type: 'array', items: grantOut, description: 'Its grants, removed with it.' },
  members: { type: 'array', items: { type: 'string' }, description: 'Consumers that were members (the group was removed from their groups).' },
}, 'What was removed.'));

const auditOut = named('IdentityAuditEntry', obj({
  id: str('Entry id.'),
  at: time('When.'),
  actor: str('Who: the admin token\'s name, "cli" or "scheduler" (expired-key purges).'),
  action: { type: 'string', enum: [...S.IDENTITY_AUDIT_ACTIONS, 'key.purge'], description: 'What changed.' },
  target: str('<kind>:<id> of the record changed.'),
  summary: { type: 'object', description: 'What changed, as the store wrote it (field names, ids, counts, key prefixes; times in ms since the epoch): never a key, a hash or a secret.' },
}, 'One change of the identity store.'));

const page = (name: string, item: Schema, what: string): Schema => named(name, obj({
  items: { type: 'array', items: item, description: what },
  next: { type: ['string', 'null'], description: 'Cursor for the next page (pass it as ?cursor=); null on the last page.' },
}, `A page of ${what.toLowerCase()}`));
const consumerPage = page('IdentityConsumerPage', consumerOut, 'Consumers in id order (generated ids sort by creation time).');
const keyPage = page('IdentityApiKeyPage', keyOut, 'Keys in id order.');
const groupPage = page('IdentityGroupPage', groupOut, 'Groups in id order.');
const grantPage = page('IdentityGrantPage', grantOut, 'Grants in id order.');
const auditPage = page('IdentityAuditPage', auditOut, 'Store audit entries in id order (oldest first).');

// -- query and path parameters ------------------------------------------------

const pageProps = S.pageQuery['properties'] as Record<string, Schema>;
const limitParam = pageProps['limit']!;
const cursorParam = pageProps['cursor']!;
const pageQ = (extra: Record<string, Schema> = {}): Schema => ({ type: 'object', additionalProperties: false, properties: { limit: limitParam, cursor: cursorParam, ...extra } });
const idParam = (what: string): Record<string, Schema> => ({ id: { type: 'string', minLength: 1, maxLength: 128, description: `The ${what}'s id.` } });

// -- helpers ------------------------------------------------------------------

/** ms -> ISO-8601; a time outside the Date range (a record written before the bounds were checked) is shown at the nearest end instead of failing the answer. */
const iso = (ms: number): string => new Date(Number.isFinite(ms) ? Math.min(Math.max(ms, -8.64e15), 8.64e15) : 0).toISOString();
const isoOrNull = (ms: number | null): string | null => (ms === null ? null : iso(ms));

function consumerView(c: Consumer) {
  return {
    id: c.id, name: c.name, status: c.status, tenant: c.tenant, plan: c.plan, groups: [...c.groups], metadata: { ...c.metadata },
    createdAt: iso(c.createdAt), updatedAt: iso(c.updatedAt),
  };
}

/** A key record for an answer: every field but `hash`, named one by one so a new internal field never leaks. */
export function keyView(k: ApiKeyRecord) {
  return {
    id: k.id, consumerId: k.consumerId, name: k.name, prefix: k.prefix, scopes: [...k.scopes],
    restrictions: { cidrs: [...k.restrictions.cidrs], timeWindows: k.restrictions.timeWindows.map((w) => ({ days: [...w.days], from: w.from, to: w.to, timeZone: w.timeZone })), origins: [...k.restrictions.origins] },
    expiresAt: isoOrNull(k.expiresAt), createdAt: iso(k.createdAt), lastUsedAt: isoOrNull(k.lastUsedAt), status: k.status,
    revokedAt: isoOrNull(k.revokedAt), rotatedFrom: k.rotatedFrom, graceUntil: isoOrNull(k.graceUntil), rotatedAt: isoOrNull(k.rotatedAt),
  };
}

const newKeyView = (c: CreatedKey) => ({ key: c.key, ...keyView(c.record) });
const groupView = (g: Group) => ({ id: g.id, name: g.name, description: g.description, createdAt: iso(g.createdAt), updatedAt: iso(g.updatedAt) });
const grantView = (g: Grant) => ({ id: g.id, subject: { kind: g.subject.kind, id: g.subject.id }, routeId: g.routeId, methods: [...g.methods], createdAt: iso(g.createdAt) });
const auditView = (a: AuditEntry) => ({ id: a.id, at: iso(a.at), actor: a.actor, action: a.action, target: a.target, summary: a.summary });

/** Listing cursors: the store's cursor wrapped with the listing's name, so one listing's cursor is refused by another. */
type Listing = 'consumers' | 'keys' | 'groups' | 'grants' | 'identity-audit';
function wrapCursor(listing: Listing, c: string | null): string | null {
  return c === null ? null : Buffer.from(JSON.stringify({ k: listing, c }), 'utf8').toString('base64url');
}
function unwrapCursor(listing: Listing, cursor: unknown): string | null {
  if (typeof cursor !== 'string') return null;
  const bad = (why: string) => new ApiError(AdminErrors.INVALID_QUERY, `query parameter cursor: ${why}; pass the "next" value of the previous page unchanged, or omit it for the first page`, { parameter: 'cursor' });
  const p = ((): { k?: unknown; c?: unknown } | null => {
    try {
      return /^[A-Za-z0-9_-]+$/.test(cursor) ? JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { k?: unknown; c?: unknown } | null : null;
    } catch {
      return null;
    }
  })();
  if (p === null || typeof p !== 'object' || typeof p.c !== 'string') throw bad('not a cursor issued by this API');
  if (p.k !== listing) throw bad(`this cursor belongs to another listing (${typeof p.k === 'string' ? echo(p.k).replace(/^"(.*)"(.*)$/, '$1$2') : 'unknown'})`);
  return p.c;
}

/**
 * The 404 message for a record that is not there: where to look. Groups are
 * given by id, and a group's name is easily taken for one: the message says
 * so.
 */
function notFoundMessage(kind: string, id: string): string {
  if (kind === 'group') return `No group with id ${echo(id)}; give the group's id (not its name): GET /admin/groups (turnpike groups list) lists them.`;
  return `No ${kind} ${echo(id)}; GET /admin/${kind}s lists them.`;
}

/** A store message for a client: every word longer than MAX_ECHO_CHARS (an id or value the client gave) cut. */
function clipWords(message: string): string {
  return escapeUnsafe(message.replace(/\S{65,}/g, (w) => `${Array.from(w).slice(0, MAX_ECHO_CHARS).join('')}...`));
}

/** StoreError -> the API error of the table in the header comment; anything else is rethrown (a 500, logged). */
function fromStore(e: unknown): never {
  if (!(e instanceof StoreError)) throw e;
  switch (e.code) {
    case 'not_found': {
      // The store says "no <kind> <id>": the answer says where to look.
      const m = /^no (consumer|key|group|grant) (.*)$/.exec(e.message);
      throw new ApiError(AdminErrors.NOT_FOUND, m === null ? clipWords(e.message) : notFoundMessage(m[1]!, m[2]!));
    }
    case 'conflict': {
      const m = /^(consumer|key|group|grant) (\S+) exists$/.exec(e.message);
      throw new ApiError(AdminErrors.CONFLICT, m === null ? `${clipWords(e.message)}.` : `A ${m[1]} with id ${echo(m[2])} exists already; choose another id, or leave "id" out for a generated one.`);
    }
    case 'invalid': {
      const g = /^groups: no group with id "((?:[^"\\]|\\.)*)"/.exec(e.message);
      if (g !== null) {
        const id = JSON.parse(`"${g[1]}"`) as string;
        const message = `no group with id ${echo(id)}: give a group's id (not its name; GET /admin/groups or turnpike groups list shows them), or create it first`;
        throw new ApiError(AdminErrors.INVALID_BODY, `groups: ${message}.`, { errors: [{ path: 'groups', message }] });
      }
      const m = /^([A-Za-z][A-Za-z.]*)[ :]/.exec(e.message);
      throw new ApiError(AdminErrors.INVALID_BODY, `${clipWords(e.message)}.`, { errors: [{ path: m?.[1] ?? '', message: clipWords(e.message) }] });
    }
    case 'bad_cursor': throw new ApiError(AdminErrors.INVALID_QUERY, `query parameter cursor: ${e.message}`, { parameter: 'cursor' });
    case 'unavailable': throw new ApiError(AdminErrors.UNAVAILABLE, `The identity store is unavailable: ${e.message}. Nothing was changed; fix that and try again (GET /admin/status, the gateway log).`);
    case 'schema': throw new ApiError(AdminErrors.INTERNAL, `The identity store cannot be read by this version: ${e.message}. Run the Turnpike version that wrote it, or restore a backup.`);
  }
  throw e;
}

async function storeOf(api: AdminContext): Promise<IdentityStore> {
  if (api.identity === undefined) throw new ApiError(AdminErrors.UNAVAILABLE, 'This admin thread has no identity service; restart the gateway.');
  return api.identity.getStore().catch(fromStore);
}

/** Runs a store call with the store's errors mapped. */
async function withStore<T>(api: AdminContext, fn: (s: IdentityStore) => Promise<T>): Promise<T> {
  const s = await storeOf(api);
  return fn(s).catch((e: unknown) => {
    // The store turned out unusable (a write found another pepper's check): the service verifies, and closes it.
    if (e instanceof StoreError && e.permanent) void api.identity?.checkStore();
    return fromStore(e);
  });
}

/** The grace of a rotation without one (identity.rotationGraceMs, 30 days by default). */
function defaultGraceMs(api: AdminContext): number {
  return api.identity?.rotationGraceMs ?? api.config().identity.rotationGraceMs;
}

// -- body validation ------------------------------------------------------------

const bodyAjv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true, validateFormats: false, verbose: true });
const bodyValidators = new Map<Schema, ValidateFunction>();

type Problem = { path: string; message: string };

/** `/restrictions/cidrs/0` -> `restrictions.cidrs[0]`. */
function dotted(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    const name = fieldName(seg); // a client's field name (metadata, an unknown field): cut and escaped
    out += /^[0-9]+$/.test(seg) ? `[${seg}]` : out === '' ? name : `.${name}`;
  }
  return out;
}
const join = (base: string, name: string) => (base === '' ? name : `${base}.${name}`);

function problemOf(e: ErrorObject): Problem {
  const at = dotted(e.instancePath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const known = Object.keys(((e.parentSchema as Schema | undefined)?.['properties'] ?? {}) as object);
      return { path: join(at, fieldName(String(p['additionalProperty']))), message: `unknown field${known.length > 0 ? ` (known: ${known.join(', ')})` : ''}` };
    }
    case 'required': return { path: join(at, String(p['missingProperty'])), message: 'required' };
    case 'minProperties': return { path: at, message: 'name at least one field to change' };
    case 'pattern': if (p['pattern'] === NO_CONTROL) return { path: at, message: controlMessage(e.data) };
      return { path: at, message: e.message ?? 'invalid' };
    case 'enum': return { path: at, message: `must be one of ${(p['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    default: return { path: at, message: e.message ?? 'invalid' };
  }
}

/** The body checked against `schema` (strict: unknown fields refused); 422 invalid_body listing every problem by path. */
function checkBody<T>(schema: Schema, body: unknown, what: string, extra: (b: T) => Problem[] = () => []): T {
  let v = bodyValidators.get(schema);
  if (v === undefined) {
    v = bodyAjv.compile(schema);
    bodyValidators.set(schema, v);
  }
  let problems: Problem[];
  if (body === null || typeof body !== 'object' || Array.isArray(body)) problems = [{ path: '', message: `must be a JSON object (${what})` }];
  else if ((problems = illFormedProblems(body, '', [])).length > 0) { /* said first: the schema's messages about such a string would repeat the same problem */ }
  else if (!v(body)) {
    const seen = new Set<string>();
    problems = [];
    for (const e of v.errors ?? []) {
      // anyOf branches repeat themselves: one line per path, the anyOf's own description instead.
      if (e.keyword === 'type' && (e.schemaPath.includes('anyOf'))) continue;
      const pr = e.keyword === 'anyOf' ? { path: dotted(e.instancePath), message: String(((e.parentSchema ?? {}) as Schema)['description'] ?? 'invalid') } : problemOf(e);
      const key = `${pr.path}\0${pr.message}`;
      if (!seen.has(key)) { seen.add(key); problems.push(pr); }
    }
  } else problems = extra(body as T);
  if (problems.length > 0) {
    throw new ApiError(AdminErrors.INVALID_BODY, `The body is not ${what}: ${problems.slice(0, 5).map((x) => `${x.path === '' ? '(body)' : x.path}: ${x.message}`).join('; ')}${problems.length > 5 ? ` (and ${problems.length - 5} more in "errors")` : ''}.`, { errors: problems.slice(0, 50) });
  }
  return body as T;
}

/** ISO-8601 as expiresAt takes it: a date, and optionally a time with a zone (Z or +-hh:mm), seconds and up to 9 fraction digits optional. */
const ISO_TIME_RE = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-](\d{2}):(\d{2})))?$/;
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];

/** Days of month `m` (1-12) of year `y` (proleptic Gregorian). */
function daysInMonth(y: number, m: number): number {
  if (m === 2) return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28;
  return [4, 6, 9, 11].includes(m) ? 30 : 31;
}

/**
 * What is wrong with the parts of an ISO-8601 time that matched
 * ISO_TIME_RE (an impossible date such as February 30, which Date.parse
 * would roll over to March; hour 24; a 60th second; an offset past 23:59),
 * or null.
 */
function isoPartsProblem(m: RegExpExecArray): string | null {
  const [y, mo, d, h, mi, se, oh, om] = m.slice(1).map((x) => (x === undefined ? 0 : Number(x))) as [number, number, number, number, number, number, number, number];
  if (mo < 1 || mo > 12) return `month ${m[2]} does not exist`;
  if (d < 1 || d > daysInMonth(y, mo)) return `${MONTHS[mo - 1]} ${m[1]} has no day ${m[3]} (it has ${daysInMonth(y, mo)} days)`;
  if (h > 23 || mi > 59 || se > 59) return `${m[4]}:${m[5]}${m[6] !== undefined ? `:${m[6]}` : ''} is not a time of day (00:00:00 to 23:59:59)`;
  if (oh > 23 || om > 59) return `the zone offset ${m[7]}:${m[8]} does not exist`;
  return null;
}

/**
 * expiresAt of a request -> ms, or a problem at `path`: refuses a string
 * that is not a real ISO-8601 time with a zone, a number that is not whole
 * ms, anything after MAX_EXPIRES_MS (9999-12-31T23:59:59.999Z) and anything
 * not after `now`. Never throws (no Date of an out-of-range time is made).
 */
function expiresMs(v: unknown, path: string, now: number, problems: Problem[]): number | null | undefined {
  if (v === undefined || v === null) return v as null | undefined;
  const bad = (message: string): undefined => {
    problems.push({ path, message });
    return undefined;
  };
  const tooLate = `at most ${MAX_TIME_ISO} (${MAX_EXPIRES_MS} ms since the epoch); for a key that never expires, give null`;
  let ms: number;
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < 0) return bad(`must be whole milliseconds since the epoch (got ${echo(v)})`);
    if (v > MAX_EXPIRES_MS) return bad(`must be ${tooLate} (got ${echo(v)})`);
    ms = v;
  } else {
    const s = String(v);
    const m = ISO_TIME_RE.exec(s);
    if (m === null) return bad(`must be an ISO-8601 time such as "2027-01-01T00:00:00Z" (with a zone) or milliseconds since the epoch (got ${echo(v)})`);
    const wrong = isoPartsProblem(m);
    if (wrong !== null) return bad(`${echo(v)} is not a real time: ${wrong}`);
    ms = Date.parse(s);
    if (!Number.isFinite(ms)) return bad(`${echo(v)} is not a real time`);
    if (ms > MAX_EXPIRES_MS) return bad(`must be ${tooLate} (got ${echo(v)})`);
  }
  if (ms <= now) return bad(`must be in the future (got ${echo(v)}, ${new Date(ms).toISOString()}); to stop a key now, revoke it`);
  return ms;
}

/** A CIDR or bare address, checked: the prefix length fits the family. */
function cidrProblem(c: string): string | null {
  const slash = c.indexOf('/');
  const addr = slash === -1 ? c : c.slice(0, slash);
  const fam = isIP(addr);
  if (fam === 0) return `${echo(c)} is not an IP address or CIDR (e.g. "10.0.0.0/8", "2001:db8::/32")`;
  if (slash === -1) return null;
  const bits = c.slice(slash + 1);
  const max = fam === 4 ? 32 : 128;
  if (!/^[0-9]{1,3}$/.test(bits) || Number(bits) > max) return `${echo(c)}: the prefix length must be 0..${max}`;
  return null;
}

function timeZoneOk(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

interface KeyInput { id?: string; name?: string; scopes?: string[]; expiresAt?: string | number | null; restrictions?: Partial<KeyRestrictions> }

/** The semantic checks of a key body (at `base`): expiry in the future, CIDRs, time zones. Fills `out` with the store's input. */
function keyProblems(k: KeyInput, base: string, now: number, out: { expiresAt?: number | null; restrictions?: KeyRestrictions }): Problem[] {
  const problems: Problem[] = [];
  const exp = expiresMs(k.expiresAt, join(base, 'expiresAt'), now, problems);
  if (exp !== undefined) out.expiresAt = exp;
  if (k.restrictions !== undefined) {
    const r = k.restrictions;
    (r.cidrs ?? []).forEach((c, i) => {
      const p = cidrProblem(c);
      if (p !== null) problems.push({ path: `${join(base, 'restrictions.cidrs')}[${i}]`, message: p });
    });
    const windows = (r.timeWindows ?? []).map((w, i) => {
      const tz = w.timeZone ?? 'UTC';
      if (!timeZoneOk(tz)) problems.push({ path: `${join(base, 'restrictions.timeWindows')}[${i}].timeZone`, message: `${echo(tz)} is not an IANA time zone (e.g. "UTC", "Europe/Paris")` });
      if (w.from === w.to) problems.push({ path: `${join(base, 'restrictions.timeWindows')}[${i}]`, message: `from and to are both ${w.from}: an empty window; use 00:00 to 24:00 for a whole day` });
      return { days: [...w.days], from: w.from, to: w.to, timeZone: tz };
    });
    out.restrictions = { cidrs: [...(r.cidrs ?? [])], timeWindows: windows, origins: [...(r.origins ?? [])] };
  }
  return problems;
}

function storeKeyInput(k: KeyInput, checked: { expiresAt?: number | null; restrictions?: KeyRestrictions }) {
  return {
    ...(k.id !== undefined ? { id: k.id } : {}), name: k.name!, ...(k.scopes !== undefined ? { scopes: [...new Set(k.scopes)] } : {}),
    ...(checked.expiresAt !== undefined ? { expiresAt: checked.expiresAt } : {}), ...(checked.restrictions !== undefined ? { restrictions: checked.restrictions } : {}),
  };
}

/** The answer of a write, with its admin-audit outcome. */
function applied(api: AdminContext, status: number, body: unknown): HandlerResult {
  return { status, body, audit: { result: 'applied', dryRun: false, versionAfter: api.config().version, changes: null, errors: [] } };
}

// -- endpoint table -------------------------------------------------------------

const err = (description: string) => ({ description, schema: S.errorBody });
const R401 = { 401: err('Missing or invalid token (answered with WWW-Authenticate: Bearer).') };
const R403 = { 403: err('The token has the viewer role; this endpoint needs admin.') };
const R503 = { 503: err('The identity store cannot be opened or reached (unavailable); the message says what to do.') };
const READ = { 400: err('Invalid query parameter or cursor (invalid_query, with "parameter").'), ...R401, ...R503 };
const WRITE = {
  400: err('Malformed JSON (malformed_body), a body where none is taken (unexpected_body) or a query parameter (invalid_query).'),
  ...R401, ...R403,
  413: err(`Body above ${IDENTITY_BODY_MAX_BYTES / 1024} KiB (body_too_large).`),
  415: err('Content type other than JSON (unsupported_media_type).'),
  422: err('The body is not what the endpoint takes (invalid_body): "errors" lists every problem by path (unknown fields too).'),
  ...R503,
};
const NOBODY_WRITE = { 400: err('A body was sent (unexpected_body) or a query parameter (invalid_query).'), ...R401, ...R403, ...R503 };

const body = (schema: Schema, description: string, optional = false) => ({
  schema, contentTypes: ['application/json'] as const, maxBytes: IDENTITY_BODY_MAX_BYTES, description, ...(optional ? { optional: true } : {}),
});

const TAG = 'identity';

async function mustGet<T>(api: AdminContext, what: string, id: string, get: (s: IdentityStore) => Promise<T | null>, listHint: string): Promise<T> {
  const r = await withStore(api, get);
  if (r === null) throw new ApiError(AdminErrors.NOT_FOUND, what === 'group' ? notFoundMessage(what, id) : `No ${what} ${echo(id)}; ${listHint} lists them.`);
  return r;
}

function pageOf<T, V>(listing: Listing, p: Page<T>, view: (t: T) => V) {
  return { items: p.items.map(view), next: wrapCursor(listing, p.nextCursor) };
}

function pageArgs(listing: Listing, query: Record<string, unknown>) {
  return { limit: Math.min(query['limit'] as number, MAX_PAGE_LIMIT), cursor: unwrapCursor(listing, query['cursor']) };
}

const consumerEndpoints: Endpoint[] = [
  {
    method: 'POST', path: '/admin/consumers', operationId: 'createConsumer', tag: TAG, role: 'admin',
    summary: 'Create a consumer (and keys with it)',
    description: 'Creates a consumer and, with `keys`, its first API keys in the same atomic write. The answer holds each new key\'s plaintext: the only time it is shown (the store keeps an HMAC of it). Groups must exist. A consumer created with status revoked cannot have keys (409). Every string must be well-formed Unicode (422 for a lone surrogate). Audited.',
    query: S.noQuery,
    body: body(consumerIn, '{"name": "acme", "tenant": "t1", "plan": "gold", "groups": ["grp_..."], "metadata": {}, "keys": [{"name": "ci", "scopes": ["orders:read"]}]}'),
    audit: 'consumer.create',
    responses: { 201: { description: 'Created; `keys[].key` is shown this once.', schema: consumerCreated }, ...WRITE, 409: err('The id is taken, or keys were given with status revoked (conflict): a revoked consumer\'s keys never work.') },
    async handler({ api, principal, body: b }) {
      const now = Date.now();
      const checked: { expiresAt?: number | null; restrictions?: KeyRestrictions }[] = [];
      const c = checkBody<{ id?: string; name: string; status?: Consumer['status']; tenant?: string | null; plan?: string | null; groups?: string[]; metadata?: Consumer['metadata']; keys?: KeyInput[] }>(
        consumerIn, b, 'a consumer', (x) => (x.keys ?? []).flatMap((k, i) => keyProblems(k, `keys[${i}]`, now, (checked[i] = {}))),
      );
      // Keys of a consumer created revoked could never work: refused (the store refuses it too), as adding one to a revoked consumer is.
      if (c.status === 'revoked' && (c.keys?.length ?? 0) > 0) {
        try {
          requireNotRevoked(c.id ?? '(the new one)', c.status);
        } catch (e) {
          fromStore(e);
        }
      }
      const r = await withStore(api, (s) => s.createConsumer({
        ...(c.id !== undefined ? { id: c.id } : {}), name: c.name, ...(c.status !== undefined ? { status: c.status } : {}),
        ...(c.tenant !== undefined ? { tenant: c.tenant } : {}), ...(c.plan !== undefined ? { plan: c.plan } : {}),
        ...(c.groups !== undefined ? { groups: c.groups } : {}), ...(c.metadata !== undefined ? { metadata: c.metadata } : {}),
        ...(c.keys !== undefined ? { keys: c.keys.map((k, i) => storeKeyInput(k, checked[i]!)) } : {}),
      }, { actor: principal.name }));
      return applied(api, 201, { consumer: consumerView(r.consumer), keys: r.keys.map(newKeyView) });
    },
  },
  {
    method: 'GET', path: '/admin/consumers', operationId: 'listConsumers', tag: TAG, role: 'viewer',
    summary: 'Consumers',
    description: 'Consumers in id order, cursor paginated; ?tenant= keeps one tenant\'s.',
    query: pageQ({ tenant: { type: 'string', minLength: 1, maxLength: MAX_TEXT, description: 'Only this tenant\'s consumers.' } }), body: null, audit: null,
    responses: { 200: { description: 'A page of consumers.', schema: consumerPage }, ...READ },
    async handler({ api, query }) {
      const q = { ...pageArgs('consumers', query), ...(query['tenant'] !== undefined ? { tenant: query['tenant'] as string } : {}) };
      return { status: 200, body: pageOf('consumers', await withStore(api, (s) => s.listConsumers(q)), consumerView) };
    },
  },
  {
    method: 'GET', path: '/admin/consumers/{id}', operationId: 'getConsumer', tag: TAG, role: 'viewer', params: idParam('consumer'),
    summary: 'A consumer', description: 'One consumer.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'The consumer.', schema: consumerOut }, ...READ, 404: err('No such consumer (not_found).') },
    async handler({ api, params }) {
      const id = params['id']!;
      return { status: 200, body: consumerView(await mustGet(api, 'consumer', id, (s) => s.getConsumer(id), 'GET /admin/consumers')) };
    },
  },
  {
    method: 'PATCH', path: '/admin/consumers/{id}', operationId: 'updateConsumer', tag: TAG, role: 'admin', params: idParam('consumer'),
    summary: 'Change a consumer',
    description: 'Changes the fields given (lists and metadata are replaced). A status change reaches every key of the consumer on every worker within about a second: suspended and revoked consumers\' keys are refused (401). suspended is reversible (back to active); revoked is final: a revoked consumer cannot become active or suspended again (409; create a new consumer). Audited.',
    query: S.noQuery, body: body(consumerPatch, '{"status": "suspended"} or any of name, status, tenant, plan, groups, metadata'),
    audit: 'consumer.update',
    responses: { 200: { description: 'The consumer now.', schema: consumerOut }, ...WRITE, 404: err('No such consumer (not_found).'), 409: err('The consumer is revoked and the change would make it active or suspended: revoked is final (conflict).') },
    async handler({ api, principal, params, body: b }) {
      const p = checkBody<Record<string, unknown>>(consumerPatch, b, 'a consumer change');
      const c = await withStore(api, (s) => s.updateConsumer(params['id']!, p, { actor: principal.name }));
      return applied(api, 200, consumerView(c));
    },
  },
  {
    method: 'DELETE', path: '/admin/consumers/{id}', operationId: 'deleteConsumer', tag: TAG, role: 'admin', params: idParam('consumer'),
    summary: 'Delete a consumer, its keys and grants',
    description: 'Removes the consumer with its keys (refused everywhere within about a second) and its grants, atomically. To keep the record but stop its keys, PATCH status to suspended or revoked instead. Audited.',
    query: S.noQuery, body: null, audit: 'consumer.delete',
    responses: { 200: { description: 'What was removed.', schema: consumerDeleted }, ...NOBODY_WRITE, 404: err('No such consumer (not_found).') },
    async handler({ api, principal, params }) {
      const r = await withStore(api, (s) => s.deleteConsumer(params['id']!, { actor: principal.name }));
      return applied(api, 200, { consumer: consumerView(r.consumer), keys: r.keys.map(keyView), grants: r.grants.map(grantView) });
    },
  },
  {
    method: 'POST', path: '/admin/consumers/{id}/keys', operationId: 'createKey', tag: TAG, role: 'admin', params: idParam('consumer'),
    summary: 'Create an API key for a consumer',
    description: 'Makes a new key (tp_<env>_<random>_<checksum>, 192 random bits) for the consumer. The answer\'s `key` is the plaintext, shown this once: the store keeps only HMAC-SHA256(pepper, key). expiresAt takes an ISO-8601 time or ms since the epoch. Audited (the key\'s prefix, never the key).',
    query: S.noQuery,
    body: body(keyIn, '{"name": "ci", "scopes": ["orders:read"], "expiresAt": "2027-01-01T00:00:00Z", "restrictions": {"cidrs": ["10.0.0.0/8"], "timeWindows": [], "origins": []}}'),
    audit: 'key.create',
    responses: { 201: { description: 'Created; `key` is shown this once.', schema: newKeyOut }, ...WRITE, 404: err('No such consumer (not_found).'), 409: err('The key id is taken, or the consumer is revoked (conflict): a revoked consumer\'s keys never work.') },
    async handler({ api, principal, params, body: b }) {
      const checked: { expiresAt?: number | null; restrictions?: KeyRestrictions } = {};
      const k = checkBody<KeyInput>(keyIn, b, 'a key', (x) => keyProblems(x, '', Date.now(), checked));
      const r = await withStore(api, (s) => s.createKey(params['id']!, storeKeyInput(k, checked), { actor: principal.name }));
      return applied(api, 201, newKeyView(r));
    },
  },
];

const keyEndpoints: Endpoint[] = [
  {
    method: 'GET', path: '/admin/keys', operationId: 'listKeys', tag: TAG, role: 'viewer',
    summary: 'API keys',
    description: 'Keys in id order (never the keys themselves nor their hashes), cursor paginated; ?consumer= keeps one consumer\'s (404 when it does not exist).',
    query: pageQ({ consumer: { type: 'string', minLength: 1, maxLength: 128, description: 'Only this consumer\'s keys (its id).' } }), body: null, audit: null,
    responses: { 200: { description: 'A page of keys.', schema: keyPage }, ...READ, 404: err('?consumer names no consumer (not_found).') },
    async handler({ api, query }) {
      const consumer = query['consumer'] as string | undefined;
      if (consumer !== undefined) await mustGet(api, 'consumer', consumer, (s) => s.getConsumer(consumer), 'GET /admin/consumers');
      const q = { ...pageArgs('keys', query), ...(consumer !== undefined ? { consumerId: consumer } : {}) };
      return { status: 200, body: pageOf('keys', await withStore(api, (s) => s.listKeys(q)), keyView) };
    },
  },
  {
    method: 'GET', path: '/admin/keys/{id}', operationId: 'getKey', tag: TAG, role: 'viewer', params: idParam('key'),
    summary: 'An API key', description: 'One key record: never the key itself (shown only when made) nor its hash.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'The key.', schema: keyOut }, ...READ, 404: err('No such key (not_found).') },
    async handler({ api, params }) {
      const id = params['id']!;
      return { status: 200, body: keyView(await mustGet(api, 'key', id, (s) => s.getKey(id), 'GET /admin/keys')) };
    },
  },
  {
    method: 'PATCH', path: '/admin/keys/{id}', operationId: 'updateKey', tag: TAG, role: 'admin', params: idParam('key'),
    summary: 'Change an API key',
    description: 'Changes name, scopes, expiresAt (ISO-8601 or ms; null: never) or restrictions (replaced whole). Every worker sees the change within about a second. Audited.',
    query: S.noQuery, body: body(keyPatch, '{"scopes": ["orders:read", "orders:write"]} or any of name, scopes, expiresAt, restrictions'),
    audit: 'key.update',
    responses: { 200: { description: 'The key now.', schema: keyOut }, ...WRITE, 404: err('No such key (not_found).') },
    async handler({ api, principal, params, body: b }) {
      const checked: { expiresAt?: number | null; restrictions?: KeyRestrictions } = {};
      const k = checkBody<KeyInput>(keyPatch, b, 'a key change', (x) => keyProblems(x, '', Date.now(), checked));
      const patch = {
        ...(k.name !== undefined ? { name: k.name } : {}), ...(k.scopes !== undefined ? { scopes: [...new Set(k.scopes)] } : {}),
        ...(k.expiresAt !== undefined ? { expiresAt: checked.expiresAt ?? null } : {}), ...(checked.restrictions !== undefined ? { restrictions: checked.restrictions } : {}),
      };
      return applied(api, 200, keyView(await withStore(api, (s) => s.updateKey(params['id']!, patch, { actor: principal.name }))));
    },
  },
  {
    method: 'POST', path: '/admin/keys/{id}/rotate', operationId: 'rotateKey', tag: TAG, role: 'admin', params: idParam('key'),
    summary: 'Rotate an API key',
    description: 'Makes a new key with the old one\'s consumer, name, scopes, restrictions and expiry; the old key keeps working for the grace period (graceMs or grace "30d"; default identity.rotationGraceMs, 30 days; 0 ends it now), its answers carrying Deprecation and Sunset headers. The body is optional. The new key\'s plaintext is shown this once. A revoked or already rotated key, or a key of a revoked consumer, cannot be rotated (409). Audited.',
    query: S.noQuery, body: body(rotateIn, '{"grace": "7d"} or {"graceMs": 604800000}; optional', true),
    audit: 'key.rotate',
    responses: { 201: { description: 'The new key (plaintext shown this once) and the old one.', schema: rotatedOut }, ...WRITE, 404: err('No such key (not_found).'), 409: err('The key is revoked or already rotated, or its consumer is revoked (conflict).') },
    async handler({ api, principal, params, body: b }) {
      let graceMs = defaultGraceMs(api);
      if (b !== undefined) {
        const o = checkBody<{ graceMs?: number; grace?: string }>(rotateIn, b, 'rotation options', (x) => {
          if (x.graceMs !== undefined && x.grace !== undefined) return [{ path: 'grace', message: 'give graceMs or grace, not both' }];
          const ms = x.grace === undefined ? x.graceMs : graceText(x.grace);
          if (ms !== undefined && !(ms <= MAX_GRACE_MS)) return [{ path: x.grace === undefined ? 'graceMs' : 'grace', message: `at most 366 days, ${MAX_GRACE_MS} ms (got ${echo(x.grace ?? x.graceMs)})` }];
          return [];
        });
        const ms = o.grace !== undefined ? graceText(o.grace) : o.graceMs;
        if (ms !== undefined) graceMs = ms;
      }
      const r = await withStore(api, (s) => s.rotateKey(params['id']!, { graceMs }, { actor: principal.name }));
      return applied(api, 201, { key: r.key, ...keyView(r.record), old: keyView(r.old) });
    },
  },
  {
    method: 'POST', path: '/admin/keys/{id}/revoke', operationId: 'revokeKey', tag: TAG, role: 'admin', params: idParam('key'),
    summary: 'Revoke an API key',
    description: 'Refuses the key from now on (401 key_revoked) on every worker of every instance within about a second, and after restarts. Idempotent: revoking a revoked key answers it unchanged. No body. Audited.',
    query: S.noQuery, body: null, audit: 'key.revoke',
    responses: { 200: { description: 'The key, revoked.', schema: keyOut }, ...NOBODY_WRITE, 404: err('No such key (not_found).') },
    async handler({ api, principal, params }) {
      return applied(api, 200, keyView(await withStore(api, (s) => s.revokeKey(params['id']!, { actor: principal.name }))));
    },
  },
];

/** "30d" -> ms, as config durations plus days. */
function graceText(t: string): number {
  const d = /^([0-9]+)d$/.exec(t);
  return d !== null ? Number(d[1]) * 86_400_000 : parseDuration(t)!;
}

const groupEndpoints: Endpoint[] = [
  {
    method: 'POST', path: '/admin/groups', operationId: 'createGroup', tag: TAG, role: 'admin',
    summary: 'Create a group', description: 'A group of consumers: grants to it hold for every member (consumers list their groups). Audited.',
    query: S.noQuery, body: body(groupIn, '{"name": "partners", "description": "..."}'), audit: 'group.create',
    responses: { 201: { description: 'Created.', schema: groupOut }, ...WRITE, 409: err('The id is taken (conflict).') },
    async handler({ api, principal, body: b }) {
      const g = checkBody<{ id?: string; name: string; description?: string | null }>(groupIn, b, 'a group');
      return applied(api, 201, groupView(await withStore(api, (s) => s.createGroup(g, { actor: principal.name }))));
    },
  },
  {
    method: 'GET', path: '/admin/groups', operationId: 'listGroups', tag: TAG, role: 'viewer',
    summary: 'Groups', description: 'Groups in id order, cursor paginated.',
    query: pageQ(), body: null, audit: null,
    responses: { 200: { description: 'A page of groups.', schema: groupPage }, ...READ },
    async handler({ api, query }) {
      const q = pageArgs('groups', query);
      return { status: 200, body: pageOf('groups', await withStore(api, (s) => s.listGroups(q)), groupView) };
    },
  },
  {
    method: 'GET', path: '/admin/groups/{id}', operationId: 'getGroup', tag: TAG, role: 'viewer', params: idParam('group'),
    summary: 'A group', description: 'One group.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'The group.', schema: groupOut }, ...READ, 404: err('No such group (not_found).') },
    async handler({ api, params }) {
      const id = params['id']!;
      return { status: 200, body: groupView(await mustGet(api, 'group', id, (s) => s.getGroup(id), 'GET /admin/groups')) };
    },
  },
  {
    method: 'PATCH', path: '/admin/groups/{id}', operationId: 'updateGroup', tag: TAG, role: 'admin', params: idParam('group'),
    summary: 'Change a group', description: 'Changes name or description. Audited.',
    query: S.noQuery, body: body(groupPatch, '{"name": "...", "description": "..."}'), audit: 'group.update',
    responses: { 200: { description: 'The group now.', schema: groupOut }, ...WRITE, 404: err('No such group (not_found).') },
    async handler({ api, principal, params, body: b }) {
      const p = checkBody<{ name?: string; description?: string | null }>(groupPatch, b, 'a group change');
      return applied(api, 200, groupView(await withStore(api, (s) => s.updateGroup(params['id']!, p, { actor: principal.name }))));
    },
  },
  {
    method: 'DELETE', path: '/admin/groups/{id}', operationId: 'deleteGroup', tag: TAG, role: 'admin', params: idParam('group'),
    summary: 'Delete a group', description: 'Removes the group, its grants, and its id from every member\'s groups, atomically. Audited.',
    query: S.noQuery, body: null, audit: 'group.delete',
    responses: { 200: { description: 'What was removed.', schema: groupDeleted }, ...NOBODY_WRITE, 404: err('No such group (not_found).') },
    async handler({ api, principal, params }) {
      const r = await withStore(api, (s) => s.deleteGroup(params['id']!, { actor: principal.name }));
      return applied(api, 200, { group: groupView(r.group), grants: r.grants.map(grantView), members: [...r.members] });
    },
  },
];

const SUBJECT_RE = /^(consumer|group):(.+)$/;

const grantEndpoints: Endpoint[] = [
  {
    method: 'POST', path: '/admin/grants', operationId: 'createGrant', tag: TAG, role: 'admin',
    summary: 'Grant a consumer or group a route',
    description: 'Lets the subject (a consumer, or every member of a group) call route routeId with the methods given (default any), on routes whose auth says grants: required. A routeId the running config does not have is accepted with a warning (the grant applies once such a route exists). Audited.',
    query: S.noQuery, body: body(grantIn, '{"subject": {"kind": "consumer", "id": "con_..."}, "routeId": "orders", "methods": ["GET"]}'),
    audit: 'grant.create',
    responses: { 201: { description: 'Created (with warnings, if any).', schema: grantCreated }, ...WRITE, 404: err('The subject does not exist (not_found).'), 409: err('The id is taken (conflict).') },
    async handler({ api, principal, body: b }) {
      const g = checkBody<{ id?: string; subject: { kind: 'consumer' | 'group'; id: string }; routeId: string; methods?: string[] }>(grantIn, b, 'a grant');
      const created = await withStore(api, (s) => s.createGrant(g, { actor: principal.name }));
      const routes = api.config().routes.map((r) => r.id);
      const warnings = routes.includes(g.routeId)
        ? []
        : [{ path: 'routeId', message: `the running config has no route ${echo(g.routeId)}${routes.length > 0 ? ` (routes: ${routes.slice(0, 20).join(', ')}${routes.length > 20 ? ', ...' : ''})` : ''}; the grant does nothing until a route with that id exists` }];
      return applied(api, 201, { ...grantView(created), warnings });
    },
  },
  {
    method: 'GET', path: '/admin/grants', operationId: 'listGrants', tag: TAG, role: 'viewer',
    summary: 'Grants',
    description: 'Grants in id order, cursor paginated; ?subject=consumer:<id> or group:<id> keeps one subject\'s own grants (a consumer\'s group grants are listed under the group).',
    query: pageQ({ subject: { type: 'string', pattern: '^(consumer|group):[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$', description: 'consumer:<id> or group:<id>.' } }), body: null, audit: null,
    responses: { 200: { description: 'A page of grants.', schema: grantPage }, ...READ, 404: err('?subject names no consumer or group (not_found).') },
    async handler({ api, query }) {
      let subject: { kind: 'consumer' | 'group'; id: string } | undefined;
      if (typeof query['subject'] === 'string') {
        const m = SUBJECT_RE.exec(query['subject'])!;
        const kind = m[1] as 'consumer' | 'group';
        const id = m[2]!;
        await mustGet<unknown>(api, kind, id, (s) => (kind === 'consumer' ? s.getConsumer(id) : s.getGroup(id)), kind === 'consumer' ? 'GET /admin/consumers' : 'GET /admin/groups');
        subject = { kind, id };
      }
      const q = { ...pageArgs('grants', query), ...(subject !== undefined ? { subject } : {}) };
      return { status: 200, body: pageOf('grants', await withStore(api, (s) => s.listGrants(q)), grantView) };
    },
  },
  {
    method: 'GET', path: '/admin/grants/{id}', operationId: 'getGrant', tag: TAG, role: 'viewer', params: idParam('grant'),
    summary: 'A grant', description: 'One grant.',
    query: S.noQuery, body: null, audit: null,
    responses: { 200: { description: 'The grant.', schema: grantOut }, ...READ, 404: err('No such grant (not_found).') },
    async handler({ api, params }) {
      const id = params['id']!;
      return { status: 200, body: grantView(await mustGet(api, 'grant', id, (s) => s.getGrant(id), 'GET /admin/grants')) };
    },
  },
  {
    method: 'DELETE', path: '/admin/grants/{id}', operationId: 'deleteGrant', tag: TAG, role: 'admin', params: idParam('grant'),
    summary: 'Delete a grant', description: 'Removes the grant; requests it allowed are refused (403 no_grant) within about a second. Audited.',
    query: S.noQuery, body: null, audit: 'grant.delete',
    responses: { 200: { description: 'The grant removed.', schema: grantOut }, ...NOBODY_WRITE, 404: err('No such grant (not_found).') },
    async handler({ api, principal, params }) {
      return applied(api, 200, grantView(await withStore(api, (s) => s.deleteGrant(params['id']!, { actor: principal.name }))));
    },
  },
  {
    method: 'GET', path: '/admin/identity/audit', operationId: 'listIdentityAudit', tag: TAG, role: 'viewer',
    summary: 'Identity store audit log',
    description: 'Every change of the identity store (consumers, keys, groups, grants, expired-key purges), oldest first, cursor paginated: kept in the store itself (written in the same atomic write as the change), so it is shared by every instance of a Redis store and survives restarts. Never a key or hash.',
    query: pageQ(), body: null, audit: null,
    responses: { 200: { description: 'A page of audit entries.', schema: auditPage }, ...READ },
    async handler({ api, query }) {
      const q = pageArgs('identity-audit', query);
      return { status: 200, body: pageOf('identity-audit', await withStore(api, (s) => s.listAudit(q)), auditView) };
    },
  },
];

/** The identity endpoints, in the order the OpenAPI document lists them. */
export const IDENTITY_ENDPOINTS: readonly Endpoint[] = [...consumerEndpoints, ...keyEndpoints, ...groupEndpoints, ...grantEndpoints];
