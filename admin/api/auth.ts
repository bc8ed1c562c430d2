/**
 * Admin API credentials: bearer tokens with a role.
 *
 *   admin   read and write (reload, replace the config)
 *   viewer  read only
 *
 * Sources, all merged:
 * - TURNPIKE_ADMIN_TOKEN (or TURNPIKE_ADMIN_TOKEN_FILE, a file holding it):
 *   role admin, name "env".
 * - admin.tokensFile: lines `name role sha256:<hex of the token>`. Only the
 *   hash is stored, so the file is not itself a credential.
 * - Neither: a random token is generated once the admin listener is bound,
 *   into .turnpike/admin-token-<admin port> (0600, directory 0700) under the
 *   working directory; only that path is logged, never the token. Named by
 *   port so that gateways started from one directory (necessarily on
 *   different admin ports) never overwrite each other's; clients find it
 *   from the admin URL's port. The file is removed when the gateway stops.
 *   Older versions wrote .turnpike/admin-token; clients still read it last.
 *
 * Comparison is on SHA-256 digests with crypto.timingSafeEqual: both sides
 * are 32 bytes whatever the token lengths, and every configured token is
 * compared (no early exit), so the time taken says nothing about how close a
 * guess was or which entry matched.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export type Role = 'admin' | 'viewer';
export const ROLES: readonly Role[] = ['viewer', 'admin'];

export interface Principal {
  /** The token's name: "env", "generated" or the tokens-file name. Audit actor. */
  name: string;
  role: Role;
}

export interface TokenEntry extends Principal {
  /** SHA-256 of the token (32 bytes). */
  digest: Buffer;
  /** Where it was configured, for messages: `tokens.txt:3`, `TURNPIKE_ADMIN_TOKEN`. */
  origin: string;
}

/** Where the generated token goes, relative to the working directory: one file per admin port. */
export function generatedTokenFile(adminPort: number): string {
  return join('.turnpike', `admin-token-${adminPort}`);
}
/** The one generated-token file of versions before tokens were named by port; clients still read it, last. */
export const LEGACY_TOKEN_FILE = join('.turnpike', 'admin-token');
/** A configured token shorter than this draws a warning. */
export const MIN_TOKEN_LENGTH = 16;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$/;
const HASH = /^sha256:([0-9a-fA-F]{64})$/;

export function tokenDigest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/**
 * Constant-time token comparison: both tokens are hashed to fixed-length
 * digests first, so timingSafeEqual never sees different lengths and neither
 * the content nor the length of the expected token leaks through timing.
 */
export function tokensEqual(presented: string, expected: string): boolean {
  return timingSafeEqual(tokenDigest(presented), tokenDigest(expected));
}

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return m === null ? null : m[1]!;
}

export class TokenStore {
  readonly entries: readonly TokenEntry[];

  constructor(entries: readonly TokenEntry[]) {
    this.entries = entries;
  }

  get size(): number {
    return this.entries.length;
  }

  /** The principal a token belongs to, or null. Compares with every entry. */
  authenticate(token: string): Principal | null {
    const digest = tokenDigest(token);
    let found: TokenEntry | null = null;
    for (const e of this.entries) {
      // No early exit: the loop costs the same wherever the match is.
      if (timingSafeEqual(digest, e.digest) && found === null) found = e;
    }
    return found === null ? null : { name: found.name, role: found.role };
  }
}

/** A problem with a configured token source; the message names file and line. */
export class AuthConfigError extends Error {
  override readonly name = 'AuthConfigError';
}

/**
 * Parses a tokens file. Every bad line is reported (one error listing them
 * all), each as `file:line: problem`.
 */
export function parseTokensFile(text: string, fileName: string): TokenEntry[] {
  const entries: TokenEntry[] = [];
  const problems: string[] = [];
  const seen = new Map<string, number>();
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const lineNo = i + 1;
    const hashAt = raw.indexOf('#');
    const line = (hashAt === -1 ? raw : raw.slice(0, hashAt)).trim();
    if (line === '') return;
    const at = `${fileName}:${lineNo}`;
    const fields = line.split(/\s+/);
    if (fields.length !== 3) {
      problems.push(`${at}: expected "name role sha256:<64 hex digits>", got ${fields.length} field${fields.length === 1 ? '' : 's'}`);
      return;
    }
    const [name, role, hash] = fields as [string, string, string];
    if (!NAME.test(name)) {
      problems.push(`${at}: invalid token name ${JSON.stringify(name)} (letters, digits, "_", ".", "@", ":", "-"; at most 64)`);
      return;
    }
    if (role !== 'admin' && role !== 'viewer') {
      problems.push(`${at}: unknown role ${JSON.stringify(role)}; use admin or viewer`);
      return;
    }
    const m = HASH.exec(hash);
    if (m === null) {
      problems.push(`${at}: the token must be stored as sha256:<64 hex digits> (printf %s "$TOKEN" | sha256sum), never in plain text`);
      return;
    }
    const hex = m[1]!.toLowerCase();
    const dup = seen.get(hex);
    if (dup !== undefined) {
      problems.push(`${at}: the same token is already listed on line ${dup}; give each token one line`);
      return;
    }
    seen.set(hex, lineNo);
    entries.push({ name, role, digest: Buffer.from(hex, 'hex'), origin: at });
  });
  if (problems.length > 0) {
    throw new AuthConfigError(`admin.tokensFile ${fileName} has ${problems.length} bad line${problems.length === 1 ? '' : 's'}:\n${problems.join('\n')}`);
  }
  return entries;
}

export interface TokenSources {
  env: NodeJS.ProcessEnv;
  /** admin.tokensFile as configured (relative to cwd), or null. */
  tokensFile: string | null;
  cwd: string;
}

/** Reads every configured token. Throws AuthConfigError; returns warnings to log. */
export function loadTokens(src: TokenSources): { entries: TokenEntry[]; warnings: string[] } {
  const entries: TokenEntry[] = [];
  const warnings: string[] = [];
  const fromEnv = src.env['TURNPIKE_ADMIN_TOKEN'];
  const fileEnv = src.env['TURNPIKE_ADMIN_TOKEN_FILE'];
  if (fromEnv !== undefined && fileEnv !== undefined) {
    throw new AuthConfigError('both TURNPIKE_ADMIN_TOKEN and TURNPIKE_ADMIN_TOKEN_FILE are set; keep one');
  }
  let envToken: string | null = null;
  let envOrigin = 'TURNPIKE_ADMIN_TOKEN';
  if (fromEnv !== undefined) {
    envToken = fromEnv;
  } else if (fileEnv !== undefined) {
    envOrigin = 'TURNPIKE_ADMIN_TOKEN_FILE';
    try {
      envToken = readFileSync(resolve(src.cwd, fileEnv), 'utf8').trim();
    } catch (e) {
      throw new AuthConfigError(`TURNPIKE_ADMIN_TOKEN_FILE: cannot read ${JSON.stringify(fileEnv)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  }
  if (envToken !== null) {
    if (envToken === '' || /\s/.test(envToken)) throw new AuthConfigError(`${envOrigin}: the token is empty or contains whitespace; unset it or give a token`);
    if (envToken.length < MIN_TOKEN_LENGTH) warnings.push(`${envOrigin} is shorter than ${MIN_TOKEN_LENGTH} characters; use a long random token (openssl rand -base64 32)`);
    entries.push({ name: 'env', role: 'admin', digest: tokenDigest(envToken), origin: envOrigin });
  }
  if (src.tokensFile !== null) {
    const path = resolve(src.cwd, src.tokensFile);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'not found' : code === 'EACCES' ? 'permission denied' : (code ?? (e as Error).message);
      throw new AuthConfigError(`admin.tokensFile: cannot read ${JSON.stringify(path)} (${why}); fix the path or remove the setting`);
    }
    entries.push(...parseTokensFile(text, src.tokensFile));
  }
  return { entries, warnings };
}

/** A fresh random admin token: 32 random bytes, base64url (43 characters). */
export function generateToken(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * Writes a new token to `<cwd>/.turnpike/admin-token-<adminPort>` (directory
 * 0700, file 0600, written under a temporary name and renamed, so a reader
 * never sees half a token). `adminPort` is the port the admin listener
 * bound (never 0): only the gateway holding that port writes this file.
 * Returns the token and the absolute path. Throws on I/O errors.
 */
export function writeGeneratedToken(cwd: string, adminPort: number, token: string = generateToken()): { token: string; path: string } {
  const path = resolve(cwd, generatedTokenFile(adminPort));
  const dir = resolve(cwd, '.turnpike');
  const created = mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) chmodSync(dir, 0o700);
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, token + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return { token, path };
}

/**
 * Removes a generated token file when it still holds the token of `digest`
 * (the gateway stops: the token dies with it). Never throws.
 */
export function removeGeneratedToken(path: string, digest: Buffer): void {
  try {
    if (timingSafeEqual(tokenDigest(readFileSync(path, 'utf8').trim()), digest)) unlinkSync(path);
  } catch { /* already gone or replaced: nothing to do */ }
}

/**
 * The token a client (turnpike reload) should send to the admin listener on
 * `adminPort`: TURNPIKE_ADMIN_TOKEN, TURNPIKE_ADMIN_TOKEN_FILE, then the
 * token generated for that port (`<cwd>/.turnpike/admin-token-<port>`), then
 * the legacy `<cwd>/.turnpike/admin-token`. Null when none is found.
 */
export function clientToken(env: NodeJS.ProcessEnv, cwd: string, adminPort: number | null = null): { token: string; from: string } | null {
  const t = env['TURNPIKE_ADMIN_TOKEN'];
  if (t !== undefined && t !== '') return { token: t.trim(), from: 'TURNPIKE_ADMIN_TOKEN' };
  const candidates = [
    ...(env['TURNPIKE_ADMIN_TOKEN_FILE'] ? [[resolve(cwd, env['TURNPIKE_ADMIN_TOKEN_FILE']), 'TURNPIKE_ADMIN_TOKEN_FILE'] as const] : []),
    ...(adminPort !== null ? [[resolve(cwd, generatedTokenFile(adminPort)), generatedTokenFile(adminPort)] as const] : []),
    [resolve(cwd, LEGACY_TOKEN_FILE), LEGACY_TOKEN_FILE] as const,
  ];
  for (const [path, from] of candidates) {
    try {
      const token = readFileSync(path, 'utf8').trim();
      if (token !== '') return { token, from };
    } catch { /* try the next one */ }
  }
  return null;
}
