/**
 * `turnpike consumers | keys | groups | grants ...`: the identity commands,
 * a thin client of the admin API's identity endpoints (admin/api/identity.ts),
 * with the admin URL and token discovery of `turnpike reload` (cli.ts hands
 * its client in, so the rules live in one place).
 *
 * Output: a table by default (lists follow every page unless --limit), the
 * API's JSON with --json (lists: {"items": [...]} with every page). A new
 * key's plaintext is printed once, on stdout, with a warning on stderr that
 * it is not shown again. Exit codes as the other commands: 0 done, 1 the
 * gateway refused or could not be reached, 2 usage error.
 *
 * Everything printed that came from the store (names, descriptions,
 * metadata, messages echoing them) has its control characters escaped
 * (printable): a name holding ESC or CR cannot drive the terminal or fake
 * table rows, whatever the gateway let in. Groups may be given by id or by
 * name (resolveGroup).
 */
import { ID_PATTERN, MAX_TIME_ISO, MAX_TIME_MS } from '../admin/identity/store/types.js';

export interface AdminAnswer {
  status: number;
  body: unknown;
  tokenFrom: string;
}

/** What cli.ts lends: URL and token discovery, one request, and its error printing. */
export interface AdminClient {
  /** The admin base URL from --admin, TURNPIKE_ADMIN_URL or the default (exits 2 on a bad one). */
  url(admin: string | null, command: string): string;
  request(base: string, method: string, path: string, body?: { type: string; text: string }): Promise<AdminAnswer>;
  /** Prints an error answer (401, 403, 422 with "errors", others) and exits 1. */
  failure(base: string, r: AdminAnswer, refusedHeadline: string): never;
  /** A usage error: the message and the command's help, exit 2. */
  usage(message: string, command: string): never;
}

export const IDENTITY_COMMANDS: readonly string[] = ['consumers', 'keys', 'groups', 'grants'];

/** Page size the list commands ask for. */
const LIST_PAGE = 200;

interface Parsed {
  positionals: string[];
  /** --name value (repeatable ones keep every value). */
  values: Map<string, string[]>;
  flags: Set<string>;
}

interface Sub {
  /** Positional arguments: names, for messages. */
  args: readonly string[];
  /** Options taking a value. */
  values?: readonly string[];
  /** Options without one. */
  flags?: readonly string[];
  run(ctx: Ctx): Promise<void>;
}

interface Ctx {
  p: Parsed;
  base: string;
  json: boolean;
  client: AdminClient;
  command: string;
  sub: string;
  /** One value of an option (the last), or undefined. */
  one(name: string): string | undefined;
  all(name: string): string[];
  call(method: string, path: string, body?: unknown, headline?: string): Promise<any>;
}

const COMMON_VALUES = ['--admin'];
const COMMON_FLAGS = ['--json'];

function parse(argv: readonly string[], sub: Sub, command: string, subName: string, client: AdminClient): Parsed {
  const out: Parsed = { positionals: [], values: new Map(), flags: new Set() };
  const values = new Set([...(sub.values ?? []), ...COMMON_VALUES]);
  const flags = new Set([...(sub.flags ?? []), ...COMMON_FLAGS]);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq === -1 ? a : a.slice(0, eq);
      if (values.has(name)) {
        const v = eq === -1 ? argv[++i] : a.slice(eq + 1);
        if (v === undefined) client.usage(`${name} needs a value`, command);
        const l = out.values.get(name) ?? [];
        l.push(v);
        out.values.set(name, l);
      } else if (flags.has(name) && eq === -1) out.flags.add(name);
      else client.usage(`unknown option ${name} for "${command} ${subName}" (its options: ${[...values, ...flags].join(', ')})`, command);
    } else out.positionals.push(a);
  }
  if (out.positionals.length !== sub.args.length) {
    const want = sub.args.length === 0 ? 'no argument' : sub.args.join(' ');
    client.usage(`"${command} ${subName}" takes ${want}${out.positionals.length > sub.args.length ? ` (unexpected ${JSON.stringify(out.positionals[sub.args.length])})` : ''}`, command);
  }
  return out;
}

// -- output -------------------------------------------------------------------

/** C0 and C1 control characters and DEL: escaped as \xHH wherever the CLI prints store text. */
const CONTROL = /[\u0000-\u001F\u007F-\u009F]/g;
/** Invisible characters that reorder or break lines (bidi controls, line and paragraph separators): escaped as \u{HHHH}. */
const INVISIBLE = /[\u200E\u200F\u2028\u2029\u202A-\u202E\u2066-\u2069]/g;

/**
 * `s` safe to print on a terminal: control characters as `\xHH` (ESC ->
 * \x1b, LF -> \x0a), bidi and line-separator characters as `\u{HHHH}`;
 * everything else unchanged.
 */
export function printable(s: string): string {
  return s.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
    .replace(INVISIBLE, (c) => `\\u{${c.charCodeAt(0).toString(16).padStart(4, '0')}}`);
}

/** --json output: the API's JSON, pretty, with the characters JSON.stringify leaves raw (DEL, C1, bidi, separators) as \uHHHH escapes: the same JSON value. */
function jsonText(v: unknown): string {
  return JSON.stringify(v, null, 2).replace(/[\u007F-\u009F\u200E\u200F\u2028\u2029\u202A-\u202E\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Plain-text columns, the header underlined; cells made printable, then cut at 60 characters. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const cut = (s: string) => (s.length > 60 ? `${s.slice(0, 57)}...` : s);
  const cells = rows.map((r) => r.map((c) => cut(printable(c))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: readonly string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n');
}

/** ISO time to the second, or "-". */
const when = (t: string | null | undefined): string => (t === null || t === undefined ? '-' : t.replace(/\.\d+Z$/, 'Z'));
const dash = (s: string | null | undefined): string => (s === null || s === undefined || s === '' ? '-' : s);
const listText = (l: readonly string[] | undefined): string => (l === undefined || l.length === 0 ? '-' : l.join(','));

/** Prints a line (or lines): the values in it were made printable by the caller; what is left besides the line breaks is escaped too. */
function write(text: string): void {
  const t = text.replace(/[^\n]+/g, printable);
  process.stdout.write(t.endsWith('\n') ? t : `${t}\n`);
}

/** A message on stderr, made printable (it may echo names). */
function warn(text: string): void {
  process.stderr.write(`${printable(text)}\n`);
}

function details(pairs: ReadonlyArray<readonly [string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(w + 1)}  ${printable(v)}`).join('\n');
}

const consumerRows = (items: any[]) => table(['ID', 'NAME', 'STATUS', 'TENANT', 'PLAN', 'GROUPS', 'CREATED'],
  items.map((c) => [c.id, c.name, c.status, dash(c.tenant), dash(c.plan), listText(c.groups), when(c.createdAt)]));

function keyState(k: any): string {
  if (k.status === 'revoked') return 'revoked';
  const now = Date.now();
  if (k.expiresAt !== null && Date.parse(k.expiresAt) <= now) return 'expired';
  if (k.graceUntil !== null) return Date.parse(k.graceUntil) <= now ? 'expired' : 'rotated';
  return 'active';
}
const keyRows = (items: any[]) => table(['ID', 'CONSUMER', 'NAME', 'PREFIX', 'STATE', 'SCOPES', 'EXPIRES', 'LAST USED'],
  items.map((k) => [k.id, k.consumerId, k.name, `${k.prefix}...`, keyState(k), listText(k.scopes), when(k.expiresAt), when(k.lastUsedAt)]));
const groupRows = (items: any[]) => table(['ID', 'NAME', 'DESCRIPTION', 'CREATED'], items.map((g) => [g.id, g.name, dash(g.description), when(g.createdAt)]));
const grantRows = (items: any[]) => table(['ID', 'SUBJECT', 'ROUTE', 'METHODS', 'CREATED'],
  items.map((g) => [g.id, `${g.subject.kind}:${g.subject.id}`, g.routeId, listText(g.methods), when(g.createdAt)]));

function keyDetails(k: any): string {
  const r = k.restrictions;
  return details([
    ['id', k.id], ['consumer', k.consumerId], ['name', k.name], ['prefix', `${k.prefix}...`], ['state', keyState(k)],
    ['scopes', listText(k.scopes)], ['expires', when(k.expiresAt)], ['created', when(k.createdAt)], ['last used', when(k.lastUsedAt)],
    ['revoked', when(k.revokedAt)], ['rotated from', dash(k.rotatedFrom)], ['grace until', when(k.graceUntil)],
    ['cidrs', listText(r.cidrs)], ['origins', listText(r.origins)],
    ['time windows', r.timeWindows.length === 0 ? '-' : r.timeWindows.map((w: any) => `${w.days.join(',')} ${w.from}-${w.to} ${w.timeZone}`).join('; ')],
  ]);
}

function consumerDetails(c: any): string {
  return details([
    ['id', c.id], ['name', c.name], ['status', c.status], ['tenant', dash(c.tenant)], ['plan', dash(c.plan)], ['groups', listText(c.groups)],
    ['metadata', Object.keys(c.metadata).length === 0 ? '-' : JSON.stringify(c.metadata)], ['created', when(c.createdAt)], ['updated', when(c.updatedAt)],
  ]);
}

/** Said (on stderr) whenever a plaintext key is printed. */
export const NOT_SHOWN_AGAIN = 'warning: this is the only time a new key is shown: the gateway keeps only a hash of it. Store it now (e.g. in a secret manager); a lost key cannot be recovered, only rotated.';

/** A new key: the plaintext on stdout, the warning on stderr (so `$(...)` captures only stdout). */
function showNewKey(k: any, json: boolean, body: unknown, headline: string): void {
  if (json) write(jsonText(body));
  else write(`${headline}\n  id:    ${k.id}\n  key:   ${k.key}`);
  process.stderr.write(`${NOT_SHOWN_AGAIN}\n`);
}

// -- input helpers --------------------------------------------------------------

/** k=v pairs (values as JSON when they parse as a number, boolean or null, else text). */
function metadata(pairs: string[], client: AdminClient, command: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) client.usage(`--meta ${JSON.stringify(p)}: use key=value`, command);
    const v = p.slice(eq + 1);
    out[p.slice(0, eq)] = /^(-?\d+(\.\d+)?|true|false|null)$/.test(v) ? JSON.parse(v) : v;
  }
  return out;
}

/**
 * --expires: an ISO time, ms since the epoch, or a duration from now ("90d",
 * "12h"). A duration or ms ending after the gateway's latest expiry
 * (MAX_TIME_MS, 9999-12-31T23:59:59.999Z) is a usage error saying so; an ISO
 * time is checked by the gateway (422).
 */
function expires(v: string, client: AdminClient, command: string): string | number {
  const tooFar = (): never => {
    const days = Math.floor((MAX_TIME_MS - Date.now()) / 86_400_000);
    return client.usage(`--expires ${JSON.stringify(v)}: too far in the future; a key expires at the latest ${MAX_TIME_ISO} (${MAX_TIME_MS} ms since the epoch, about ${days}d from now); leave --expires out for a key that never expires`, command);
  };
  const d = /^([0-9]+)(ms|s|m|h|d)$/.exec(v);
  if (d !== null) {
    const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 'ms']!;
    const at = Date.now() + Number(d[1]) * unit;
    if (!(at <= MAX_TIME_MS)) return tooFar();
    return new Date(at).toISOString();
  }
  if (/^[0-9]+$/.test(v)) return Number(v) <= MAX_TIME_MS ? Number(v) : tooFar();
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) return v;
  client.usage(`--expires ${JSON.stringify(v)}: give a duration from now ("90d", "12h"), an ISO-8601 time ("2027-01-01T00:00:00Z") or ms since the epoch`, command);
}

const enc = encodeURIComponent;

// -- the commands -------------------------------------------------------------

async function listAll(ctx: Ctx, path: string, query: Record<string, string | undefined>): Promise<any[]> {
  const limitText = ctx.one('--limit');
  const max = limitText === undefined ? Infinity : Number(limitText);
  if (limitText !== undefined && (!Number.isInteger(max) || max < 1)) ctx.client.usage(`--limit ${JSON.stringify(limitText)}: a whole number >= 1`, ctx.command);
  const items: any[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, v);
    q.set('limit', String(Math.min(LIST_PAGE, max - items.length)));
    if (cursor !== null) q.set('cursor', cursor);
    const page: { items: any[]; next: string | null } = await ctx.call('GET', `${path}?${q}`);
    items.push(...page.items);
    cursor = page.next;
  } while (cursor !== null && items.length < max);
  return items;
}

/**
 * A group given by id or by name -> its id. An existing group id is taken
 * as it is; otherwise every group is listed (paged) and the one with exactly
 * that name is used. No match, or several groups with that name (their ids
 * are listed), exits 1 with what to do.
 */
async function resolveGroup(ctx: Ctx, given: string): Promise<string> {
  if (ID_PATTERN.test(given)) {
    const r = await ctx.client.request(ctx.base, 'GET', `/admin/groups/${enc(given)}`);
    if (r.status === 200) return given;
    if (r.status !== 404) return ctx.client.failure(ctx.base, r, `${ctx.command} ${ctx.sub}: cannot look up group ${JSON.stringify(given)}`);
  }
  const named: string[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams({ limit: String(LIST_PAGE) });
    if (cursor !== null) q.set('cursor', cursor);
    const page: { items: Array<{ id: string; name: string }>; next: string | null } = await ctx.call('GET', `/admin/groups?${q}`);
    for (const g of page.items) if (g.name === given) named.push(g.id);
    cursor = page.next;
  } while (cursor !== null);
  if (named.length === 1) return named[0]!;
  if (named.length === 0) warn(`turnpike: no group with id or name ${JSON.stringify(given)} (turnpike groups list shows what exists; turnpike groups create NAME makes one)`);
  else warn(`turnpike: ${named.length} groups are named ${JSON.stringify(given)}: ${named.join(', ')}; give the id of the one you mean`);
  process.exit(1);
}

/** Several groups given by id or name -> their ids (resolveGroup, one lookup per distinct value). */
async function resolveGroups(ctx: Ctx, given: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const g of new Set(given)) out.push(await resolveGroup(ctx, g));
  return out;
}

/** --subject consumer:<id> or group:<id or name> -> {kind, id}; null when it has neither form. */
async function resolveSubject(ctx: Ctx, subject: string | undefined): Promise<{ kind: 'consumer' | 'group'; id: string } | null> {
  const m = subject === undefined ? null : /^(consumer|group):(.+)$/.exec(subject);
  if (m === null) return null;
  return m[1] === 'group' ? { kind: 'group', id: await resolveGroup(ctx, m[2]!) } : { kind: 'consumer', id: m[2]! };
}

function printList(ctx: Ctx, items: any[], rows: (items: any[]) => string, what: string): void {
  if (ctx.json) return write(jsonText({ items }));
  if (items.length === 0) return write(`no ${what}`);
  write(rows(items));
}

const consumers: Record<string, Sub> = {
  list: {
    args: [], values: ['--tenant', '--limit'],
    async run(ctx) {
      printList(ctx, await listAll(ctx, '/admin/consumers', { tenant: ctx.one('--tenant') }), consumerRows, 'consumers (create one: turnpike consumers create NAME)');
    },
  },
  get: {
    args: ['ID'],
    async run(ctx) {
      const c = await ctx.call('GET', `/admin/consumers/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(c) : consumerDetails(c));
    },
  },
  create: {
    args: ['NAME'], values: ['--id', '--status', '--tenant', '--plan', '--group', '--meta', '--key'],
    async run(ctx) {
      const body: Record<string, unknown> = { name: ctx.p.positionals[0] };
      const id = ctx.one('--id');
      if (id !== undefined) body['id'] = id;
      for (const f of ['status', 'tenant', 'plan'] as const) if (ctx.one(`--${f}`) !== undefined) body[f] = ctx.one(`--${f}`);
      if (ctx.all('--group').length > 0) body['groups'] = await resolveGroups(ctx, ctx.all('--group'));
      if (ctx.all('--meta').length > 0) body['metadata'] = metadata(ctx.all('--meta'), ctx.client, ctx.command);
      if (ctx.all('--key').length > 0) body['keys'] = ctx.all('--key').map((name) => ({ name }));
      const r = await ctx.call('POST', '/admin/consumers', body, 'the consumer was not created');
      if (ctx.json) write(jsonText(r));
      else write([`created consumer ${printable(r.consumer.id)} (${printable(r.consumer.name)})`, ...r.keys.map((k: any) => `  key ${JSON.stringify(k.name)} (id ${k.id}):  ${k.key}`)].join('\n'));
      if (r.keys.length > 0) process.stderr.write(`${NOT_SHOWN_AGAIN}\n`);
    },
  },
  update: {
    args: ['ID'], values: ['--name', '--status', '--tenant', '--plan', '--group', '--meta'], flags: ['--no-groups'],
    async run(ctx) {
      const body: Record<string, unknown> = {};
      for (const f of ['name', 'status'] as const) if (ctx.one(`--${f}`) !== undefined) body[f] = ctx.one(`--${f}`);
      // --tenant "" / --plan "": back to none.
      for (const f of ['tenant', 'plan'] as const) {
        const v = ctx.one(`--${f}`);
        if (v !== undefined) body[f] = v === '' ? null : v;
      }
      if (ctx.all('--group').length > 0) body['groups'] = await resolveGroups(ctx, ctx.all('--group'));
      if (ctx.p.flags.has('--no-groups')) body['groups'] = [];
      if (ctx.all('--meta').length > 0) body['metadata'] = metadata(ctx.all('--meta'), ctx.client, ctx.command);
      if (Object.keys(body).length === 0) ctx.client.usage('consumers update: name something to change (--name, --status, --tenant, --plan, --group, --no-groups, --meta)', ctx.command);
      const c = await ctx.call('PATCH', `/admin/consumers/${enc(ctx.p.positionals[0]!)}`, body, 'the consumer was not changed');
      write(ctx.json ? jsonText(c) : `updated consumer ${c.id}\n${consumerDetails(c)}`);
    },
  },
  delete: {
    args: ['ID'],
    async run(ctx) {
      const r = await ctx.call('DELETE', `/admin/consumers/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(r) : `deleted consumer ${printable(r.consumer.id)} (${printable(r.consumer.name)}) with ${r.keys.length} key${r.keys.length === 1 ? '' : 's'} and ${r.grants.length} grant${r.grants.length === 1 ? '' : 's'}`);
    },
  },
};

const keys: Record<string, Sub> = {
  list: {
    args: [], values: ['--consumer', '--limit'],
    async run(ctx) {
      printList(ctx, await listAll(ctx, '/admin/keys', { consumer: ctx.one('--consumer') }), keyRows, 'keys (create one: turnpike keys create CONSUMER_ID --name NAME)');
    },
  },
  get: {
    args: ['ID'],
    async run(ctx) {
      const k = await ctx.call('GET', `/admin/keys/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(k) : keyDetails(k));
    },
  },
  create: {
    args: ['CONSUMER_ID'], values: ['--name', '--id', '--scope', '--expires', '--cidr', '--origin'],
    async run(ctx) {
      const body: Record<string, unknown> = { name: ctx.one('--name') ?? 'default' };
      const id = ctx.one('--id');
      if (id !== undefined) body['id'] = id;
      if (ctx.all('--scope').length > 0) body['scopes'] = ctx.all('--scope');
      const exp = ctx.one('--expires');
      if (exp !== undefined) body['expiresAt'] = expires(exp, ctx.client, ctx.command);
      if (ctx.all('--cidr').length > 0 || ctx.all('--origin').length > 0) body['restrictions'] = { cidrs: ctx.all('--cidr'), origins: ctx.all('--origin') };
      const k = await ctx.call('POST', `/admin/consumers/${enc(ctx.p.positionals[0]!)}/keys`, body, 'the key was not created');
      showNewKey(k, ctx.json, k, `created key ${JSON.stringify(k.name)} for consumer ${k.consumerId}`);
    },
  },
  rotate: {
    args: ['ID'], values: ['--grace'],
    async run(ctx) {
      const grace = ctx.one('--grace');
      if (grace !== undefined && !/^[0-9]+(ms|s|m|h|d)$/.test(grace)) ctx.client.usage(`--grace ${JSON.stringify(grace)}: a duration such as "30d", "12h" or "0s" (the old key stops now)`, ctx.command);
      const r = await ctx.call('POST', `/admin/keys/${enc(ctx.p.positionals[0]!)}/rotate`, grace === undefined ? undefined : { grace }, 'the key was not rotated');
      showNewKey(r, ctx.json, r, `rotated key ${r.old.id}: the new key is ${r.id}; the old one works until ${when(r.old.graceUntil)}`);
    },
  },
  revoke: {
    args: ['ID'],
    async run(ctx) {
      const k = await ctx.call('POST', `/admin/keys/${enc(ctx.p.positionals[0]!)}/revoke`);
      write(ctx.json ? jsonText(k) : `revoked key ${k.id} (${k.prefix}..., consumer ${k.consumerId}) at ${when(k.revokedAt)}: refused everywhere within about a second`);
    },
  },
};

const groups: Record<string, Sub> = {
  list: {
    args: [], values: ['--limit'],
    async run(ctx) {
      printList(ctx, await listAll(ctx, '/admin/groups', {}), groupRows, 'groups (create one: turnpike groups create NAME)');
    },
  },
  get: {
    args: ['ID'],
    async run(ctx) {
      const g = await ctx.call('GET', `/admin/groups/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(g) : details([['id', g.id], ['name', g.name], ['description', dash(g.description)], ['created', when(g.createdAt)], ['updated', when(g.updatedAt)]]));
    },
  },
  create: {
    args: ['NAME'], values: ['--id', '--description'],
    async run(ctx) {
      const body: Record<string, unknown> = { name: ctx.p.positionals[0] };
      if (ctx.one('--id') !== undefined) body['id'] = ctx.one('--id');
      if (ctx.one('--description') !== undefined) body['description'] = ctx.one('--description');
      const g = await ctx.call('POST', '/admin/groups', body, 'the group was not created');
      write(ctx.json ? jsonText(g) : `created group ${printable(g.id)} (${printable(g.name)})`);
    },
  },
  update: {
    args: ['ID'], values: ['--name', '--description'],
    async run(ctx) {
      const body: Record<string, unknown> = {};
      if (ctx.one('--name') !== undefined) body['name'] = ctx.one('--name');
      const d = ctx.one('--description');
      if (d !== undefined) body['description'] = d === '' ? null : d;
      if (Object.keys(body).length === 0) ctx.client.usage('groups update: name something to change (--name, --description)', ctx.command);
      const g = await ctx.call('PATCH', `/admin/groups/${enc(ctx.p.positionals[0]!)}`, body, 'the group was not changed');
      write(ctx.json ? jsonText(g) : `updated group ${printable(g.id)} (${printable(g.name)})`);
    },
  },
  delete: {
    args: ['ID'],
    async run(ctx) {
      const r = await ctx.call('DELETE', `/admin/groups/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(r) : `deleted group ${printable(r.group.id)} (${printable(r.group.name)}): ${r.grants.length} grant${r.grants.length === 1 ? '' : 's'} removed, ${r.members.length} member${r.members.length === 1 ? '' : 's'} left it`);
    },
  },
};

const grants: Record<string, Sub> = {
  list: {
    args: [], values: ['--subject', '--limit'],
    async run(ctx) {
      const given = ctx.one('--subject');
      const subject = given === undefined ? undefined : await resolveSubject(ctx, given);
      printList(ctx, await listAll(ctx, '/admin/grants', { subject: subject === undefined || subject === null ? given : `${subject.kind}:${subject.id}` }), grantRows, 'grants (create one: turnpike grants create --subject consumer:ID --route ROUTE)');
    },
  },
  get: {
    args: ['ID'],
    async run(ctx) {
      const g = await ctx.call('GET', `/admin/grants/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(g) : grantRows([g]));
    },
  },
  create: {
    args: [], values: ['--subject', '--route', '--method', '--id'],
    async run(ctx) {
      const given = ctx.one('--subject');
      const route = ctx.one('--route');
      if (given === undefined || !/^(consumer|group):./.test(given)) return ctx.client.usage('grants create needs --subject consumer:<id> or group:<id or name>', ctx.command);
      if (route === undefined) return ctx.client.usage('grants create needs --route ROUTE_ID (a routes[].id of the config)', ctx.command);
      const subject = (await resolveSubject(ctx, given))!;
      const body: Record<string, unknown> = { subject, routeId: route };
      if (ctx.all('--method').length > 0) body['methods'] = ctx.all('--method');
      if (ctx.one('--id') !== undefined) body['id'] = ctx.one('--id');
      const g = await ctx.call('POST', '/admin/grants', body, 'the grant was not created');
      for (const w of g.warnings ?? []) warn(`warning: ${w.path}: ${w.message}`);
      write(ctx.json ? jsonText(g) : `created grant ${g.id}: ${g.subject.kind}:${g.subject.id} may call route ${printable(g.routeId)} (${listText(g.methods)})`);
    },
  },
  delete: {
    args: ['ID'],
    async run(ctx) {
      const g = await ctx.call('DELETE', `/admin/grants/${enc(ctx.p.positionals[0]!)}`);
      write(ctx.json ? jsonText(g) : `deleted grant ${g.id} (${g.subject.kind}:${g.subject.id}, route ${printable(g.routeId)})`);
    },
  },
};

const TABLE: Readonly<Record<string, Record<string, Sub>>> = { consumers, keys, groups, grants };

/** What to run next after a 404, by command. */
const LIST_HINT: Readonly<Record<string, string>> = {
  consumers: 'turnpike consumers list', keys: 'turnpike keys list', groups: 'turnpike groups list', grants: 'turnpike grants list',
};

/** Runs `turnpike <command> <sub> ...` (argv without the program: ['keys', 'create', ...]). */
export async function runIdentityCommand(argv: readonly string[], client: AdminClient): Promise<void> {
  const command = argv[0]!;
  const subs = TABLE[command]!;
  const subName = argv[1];
  if (subName === undefined || !Object.hasOwn(subs, subName)) {
    client.usage(`${subName === undefined ? `${command} needs a subcommand` : `unknown subcommand ${JSON.stringify(subName)}`}: ${Object.keys(subs).join(', ')}`, command);
  }
  const sub = subs[subName]!;
  const p = parse(argv.slice(2), sub, command, subName, client);
  const admin = p.values.get('--admin');
  const base = client.url(admin === undefined ? null : admin[admin.length - 1]!, command);
  const ctx: Ctx = {
    p, base, json: p.flags.has('--json'), client, command, sub: subName,
    one: (n) => p.values.get(n)?.at(-1),
    all: (n) => p.values.get(n) ?? [],
    async call(method, path, body, headline) {
      const r = await client.request(base, method, path, body === undefined ? undefined : { type: 'application/json', text: JSON.stringify(body) });
      if (r.status >= 200 && r.status < 300) return r.body;
      const e = (r.body as { error?: { code?: string; message?: string } } | null)?.error;
      if (r.status === 404 && e?.code === 'not_found' && !/No admin endpoint/.test(e.message ?? '')) {
        const kind = /^No (consumer|key|group|grant) /.exec(e.message ?? '')?.[1];
        const hint = kind === undefined ? LIST_HINT[command] : `turnpike ${kind}s list`;
        warn(`turnpike: ${(e.message ?? '').replace(/(; GET \/admin\/\w+|: GET \/admin\/groups \(turnpike groups list\)) lists them\.$/, '.')} (${hint} shows what exists)`);
        process.exit(1);
      }
      if (r.status === 404) {
        process.stderr.write(`turnpike: the gateway at ${base} has no identity API (404): it runs an older Turnpike; upgrade it, or point --admin at a current one.\n`);
        process.exit(1);
      }
      if ((r.status === 409 || r.status === 503) && e?.message !== undefined) {
        warn(`turnpike: ${e.message}`);
        process.exit(1);
      }
      return client.failure(base, r, headline ?? `${command} ${subName} was refused`);
    },
  };
  await sub.run(ctx);
}
