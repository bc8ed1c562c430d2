/**
 * API key material: the key format, its offline check, the hash that is
 * stored, AES-256-GCM for material that must be recoverable, and the
 * loading (or first-start generation) of the secrets behind them. Pure
 * functions over node:crypto; nothing here touches a store.
 *
 * Key format (issue 12):
 *
 *   tp_<env>_<random>_<checksum>          e.g. tp_live_0Jq...(33 chars)..._3fZ9aQ
 *
 *   env       [a-z0-9]{1,8}, a label such as `live` or `test` (KEY_ENV).
 *   random    RANDOM_BYTES (24) bytes of crypto.randomBytes = 192 bits,
 *             written as a fixed-width (RANDOM_CHARS = 33) base62 number
 *             (alphabet 0-9A-Za-z, most significant digit first).
 *   checksum  CRC-32 (IEEE 802.3, the zlib/PNG polynomial 0xEDB88320,
 *             reflected, init and final xor 0xFFFFFFFF) of the ASCII bytes
 *             of `tp_<env>_<random>`, as fixed-width (CHECKSUM_CHARS = 6)
 *             base62.
 *
 * A key is therefore 45..52 characters; anything longer than MAX_KEY_LENGTH
 * (64) is refused before it is even scanned. The checksum catches typos and
 * truncation (and lets garbage be refused without a store lookup); it is
 * not a secret and is compared with `!==`. Reason codes are stable:
 * `key_malformed` (empty, too long, non-ASCII, wrong shape, wrong lengths,
 * characters outside the alphabets) and `key_checksum` (well formed, but the
 * checksum does not match: a mistyped or altered key). A finer `detail` is
 * given for logs and tests.
 *
 * Stored form: HMAC-SHA256(pepper, key as ASCII), base64url without padding
 * (43 characters). The pepper lives outside the store (environment or a
 * file), so a leaked store yields neither a usable key nor a way to test
 * guesses offline. Digests are compared with crypto.timingSafeEqual.
 *
 * Recoverable material (AES-256-GCM, NIST SP 800-38D; 96-bit random IV,
 * 128-bit tag):
 *
 *   v<version>:<iv>:<ciphertext>:<tag>     (each part base64url, no padding)
 *
 * `version` is the encryption key's version (a positive integer, the key of
 * `secrets.encryptionKeys`); the newest (highest) version encrypts, every
 * configured version decrypts, and `reencrypt` moves a value to the newest.
 * An optional associated data string (e.g. the owning record's id) binds a
 * ciphertext to its place: moved elsewhere, it no longer decrypts.
 *
 * Secret references: `env:NAME` (the environment variable NAME) or
 * `file:/path` (the file's content, surrounding whitespace trimmed). Key
 * material text is hex (64 digits for 32 bytes) or base64/base64url; the pepper must
 * decode to at least 32 bytes, an encryption key to exactly 32.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, linkSync, mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

// ------------------------------------------------------------------ format

/** Every key starts with this. */
export const KEY_PREFIX = 'tp_';
/** Bytes of randomness in a key (192 bits; the issue asks for at least 128). */
export const RANDOM_BYTES = 24;
/** Base62 digits of the random part: ceil(192 / log2(62)) = 33. */
export const RANDOM_CHARS = 33;
/** Base62 digits of the CRC-32: 62^6 > 2^32. */
export const CHECKSUM_CHARS = 6;
/** Longest env label. */
export const MAX_ENV_LENGTH = 8;
/** Longest string looked at as a key: longer input is `key_malformed` without scanning. Real keys are 45..52. */
export const MAX_KEY_LENGTH = 64;
/** The env label: 1-8 of [a-z0-9]. */
export const KEY_ENV = /^[a-z0-9]{1,8}$/;
/** The base62 alphabet, in digit order (so fixed-width numbers sort like the values). */
export const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** Why a presented key was refused without a lookup. */
export type KeyFormatCode = 'key_malformed' | 'key_checksum';
/** A finer reason, for logs and tests (never shown to clients beyond the code). */
export type KeyFormatDetail =
  | 'empty' | 'too_long' | 'non_ascii' | 'prefix' | 'env' | 'random' | 'checksum_chars' | 'checksum';

export type ParsedKey =
  | { ok: true; env: string; random: string; checksum: string }
  | { ok: false; code: KeyFormatCode; detail: KeyFormatDetail };

/** Base62 digit value of each ASCII code, -1 for anything else. */
const B62: Int8Array = (() => {
  const t = new Int8Array(128).fill(-1);
  for (let i = 0; i < BASE62.length; i++) t[BASE62.charCodeAt(i)] = i;
  return t;
})();

/**
 * CRC-32 table. Hand-written rather than zlib.crc32: that exists only from
 * Node 20.15 / 22.2 and not on every Bun, and this runs over a JS string's
 * char codes directly, so the hot path allocates no Buffer for it.
 */
const CRC_TABLE: Int32Array = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** CRC-32 (IEEE) of the chars [0, end) of an ASCII string; unsigned 32-bit. */
export function crc32Ascii(s: string, end: number = s.length): number {
  let c = -1;
  for (let i = 0; i < end; i++) c = CRC_TABLE[(c ^ s.charCodeAt(i)) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** `n` (a non-negative integer below 62^width) as fixed-width base62. */
function base62(n: bigint, width: number): string {
  const out = new Array<string>(width);
  for (let i = width - 1; i >= 0; i--) {
    out[i] = BASE62[Number(n % 62n)]!;
    n /= 62n;
  }
  return out.join('');
}

/** The checksum part for `body` = `tp_<env>_<random>`. */
export function keyChecksum(body: string): string {
  return base62(BigInt(crc32Ascii(body)), CHECKSUM_CHARS);
}

/**
 * A new API key for `env` (e.g. `live`, `test`): RANDOM_BYTES from
 * crypto.randomBytes. Throws a TypeError when `env` is not [a-z0-9]{1,8}.
 * The plaintext must be shown once and then only its `hashKey` kept.
 */
export function generateKey(env: string): string {
  if (!KEY_ENV.test(env)) throw new TypeError(`key env ${JSON.stringify(env)} must be 1-8 of [a-z0-9] (e.g. live, test)`);
  const random = base62(BigInt('0x' + randomBytes(RANDOM_BYTES).toString('hex')), RANDOM_CHARS);
  const body = `${KEY_PREFIX}${env}_${random}`;
  return `${body}_${keyChecksum(body)}`;
}

/**
 * The offline check of a presented key, without allocating: null when the
 * key is well formed with a matching checksum, else the reason code. Safe
 * on any string (empty, 10 KB, any Unicode). Same rules as parseKey.
 */
export function checkKeyFormat(key: string): KeyFormatCode | null {
  const d = keyFormatDetail(key);
  return d === null ? null : d === 'checksum' ? 'key_checksum' : 'key_malformed';
}

/**
 * Why `key` is refused, or null when it is a well formed key with a
 * matching checksum. Reported in this order: length (empty, >
 * MAX_KEY_LENGTH), non-ASCII anywhere, `tp_` prefix, env, random part,
 * checksum characters, checksum value.
 *
 * Hand-written single pass (no regex, no slice): the shape is checked and
 * the CRC-32 computed in the same loop over char codes, so a valid key
 * costs one scan and no allocation. Only a refused shape is scanned again,
 * to tell non-ASCII input apart (a valid shape is ASCII by construction).
 */
export function keyFormatDetail(key: string): KeyFormatDetail | null {
  const len = key.length;
  if (len === 0) return 'empty';
  if (len > MAX_KEY_LENGTH) return 'too_long';
  const shape = shapeDetail(key, len);
  if (shape === null || shape === 'checksum') return shape;
  for (let i = 0; i < len; i++) if (key.charCodeAt(i) > 0x7f) return 'non_ascii';
  return shape;
}

/** keyFormatDetail without the length and non-ASCII checks; `len` = key.length (1..MAX_KEY_LENGTH). */
function shapeDetail(key: string, len: number): KeyFormatDetail | null {
  if (len < 3 || key.charCodeAt(0) !== 0x74 /* t */ || key.charCodeAt(1) !== 0x70 /* p */ || key.charCodeAt(2) !== 0x5f /* _ */) return 'prefix';
  let crc = CRC_TABLE[(-1 ^ 0x74) & 0xff]! ^ (-1 >>> 8);
  crc = CRC_TABLE[(crc ^ 0x70) & 0xff]! ^ (crc >>> 8);
  crc = CRC_TABLE[(crc ^ 0x5f) & 0xff]! ^ (crc >>> 8);
  // env: [a-z0-9]{1,8} then '_'
  let i = 3;
  for (; i < len; i++) {
    const c = key.charCodeAt(i);
    if (c === 0x5f) break;
    if (i - 3 >= MAX_ENV_LENGTH || !((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39))) return 'env';
    crc = CRC_TABLE[(crc ^ c) & 0xff]! ^ (crc >>> 8);
  }
  if (i === 3 || i >= len) return 'env';
  crc = CRC_TABLE[(crc ^ 0x5f) & 0xff]! ^ (crc >>> 8);
  const randomEnd = i + 1 + RANDOM_CHARS;
  if (len < randomEnd + 1 || key.charCodeAt(randomEnd) !== 0x5f) return 'random';
  for (let j = i + 1; j < randomEnd; j++) {
    const c = key.charCodeAt(j);
    if (c > 0x7f || B62[c]! < 0) return 'random';
    crc = CRC_TABLE[(crc ^ c) & 0xff]! ^ (crc >>> 8);
  }
  if (len !== randomEnd + 1 + CHECKSUM_CHARS) return 'checksum_chars';
  let sum = 0;
  for (let j = randomEnd + 1; j < len; j++) {
    const c = key.charCodeAt(j);
    if (c > 0x7f || B62[c]! < 0) return 'checksum_chars';
    sum = sum * 62 + B62[c]!; // < 62^6 < 2^53: exact
  }
  return sum === (crc ^ -1) >>> 0 ? null : 'checksum';
}

/** parseKey: the parts of a well formed key, or the reason code and detail (see keyFormatDetail). */
export function parseKey(key: string): ParsedKey {
  const detail = keyFormatDetail(key);
  if (detail !== null) return { ok: false, code: detail === 'checksum' ? 'key_checksum' : 'key_malformed', detail };
  const envEnd = key.indexOf('_', 3);
  return {
    ok: true,
    env: key.slice(3, envEnd),
    random: key.slice(envEnd + 1, envEnd + 1 + RANDOM_CHARS),
    checksum: key.slice(key.length - CHECKSUM_CHARS),
  };
}

/**
 * What may be shown of a key after creation (listings, audit): `tp_<env>_`
 * plus the first 4 random characters, e.g. `tp_live_0Jq7`. 24 of its 192
 * random bits: enough to tell keys apart, useless to an attacker.
 */
export function keyDisplayPrefix(key: string): string {
  const envEnd = key.indexOf('_', 3);
  return key.slice(0, envEnd + 5);
}

// ------------------------------------------------------------------ hashing

/**
 * The stored form of a key: HMAC-SHA256(pepper, key) (RFC 2104), base64url
 * without padding, 43 characters. `pepper` is the secrets.keyPepper bytes.
 */
export function hashKey(pepper: Buffer, key: string): string {
  return createHmac('sha256', pepper).update(key, 'latin1').digest('base64url');
}

/**
 * Constant-time equality of two base64url HMAC digests (hashKey output).
 * Unequal lengths are false at once (the length is public: always 43).
 */
export function keyHashEquals(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1'));
}

// ------------------------------------------------------------------ AES-256-GCM

/** Encryption keys by version (positive integers); the highest encrypts. Each key is 32 bytes. */
export type Keyring = ReadonlyMap<number, Buffer>;

export type DecryptErrorCode = 'enc_malformed' | 'enc_unknown_version' | 'enc_auth_failed';

/** A value that cannot be decrypted: `code` says why (malformed text, a version not configured, a failed GCM tag: tampered, wrong key or wrong associated data). */
export class DecryptError extends Error {
  constructor(readonly code: DecryptErrorCode, message: string) {
    super(message);
    this.name = 'DecryptError';
  }
}

const IV_BYTES = 12;
const TAG_BYTES = 16;
const ENCRYPTED = /^v([1-9][0-9]{0,8}):([A-Za-z0-9_-]{16}):([A-Za-z0-9_-]*):([A-Za-z0-9_-]{22})$/;

/** The newest (highest) version of a keyring. Throws when it is empty. */
export function newestVersion(keyring: Keyring): number {
  let v = 0;
  for (const k of keyring.keys()) if (k > v) v = k;
  if (v === 0) throw new Error('no encryption key configured (secrets.encryptionKeys is empty)');
  return v;
}

/**
 * AES-256-GCM encryption of `plaintext` (UTF-8 when a string) with the
 * newest key: `v<version>:<iv>:<ciphertext>:<tag>`, base64url parts. `aad`
 * (optional) is authenticated, not stored: give the same to decrypt.
 */
export function encryptSecret(keyring: Keyring, plaintext: string | Buffer, aad?: string): string {
  const version = newestVersion(keyring);
  const key = keyring.get(version)!;
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  if (aad !== undefined) cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ct = Buffer.concat([cipher.update(typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext), cipher.final()]);
  return `v${version}:${iv.toString('base64url')}:${ct.toString('base64url')}:${cipher.getAuthTag().toString('base64url')}`;
}

/** The version an encrypted value was written with, or null when it is not one. */
export function encryptedVersion(value: string): number | null {
  const m = ENCRYPTED.exec(value);
  return m === null ? null : Number(m[1]);
}

/**
 * Decrypts an encryptSecret value. Throws DecryptError: `enc_malformed`,
 * `enc_unknown_version` (that key version is not configured: add it back to
 * secrets.encryptionKeys), `enc_auth_failed` (tampered, or another key or
 * associated data).
 */
export function decryptSecret(keyring: Keyring, value: string, aad?: string): Buffer {
  const m = ENCRYPTED.exec(value);
  if (m === null) throw new DecryptError('enc_malformed', 'not an encrypted value (expected v<version>:<iv>:<ciphertext>:<tag>)');
  const version = Number(m[1]);
  const key = keyring.get(version);
  if (key === undefined) throw new DecryptError('enc_unknown_version', `encrypted with key version ${version}, which is not configured; add it to secrets.encryptionKeys`);
  const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(m[2]!, 'base64url'), { authTagLength: TAG_BYTES });
  decipher.setAuthTag(Buffer.from(m[4]!, 'base64url'));
  if (aad !== undefined) decipher.setAAD(Buffer.from(aad, 'utf8'));
  try {
    return Buffer.concat([decipher.update(Buffer.from(m[3]!, 'base64url')), decipher.final()]);
  } catch {
    throw new DecryptError('enc_auth_failed', `value does not authenticate with key version ${version} (tampered, or encrypted with another key)`);
  }
}

/**
 * The value encrypted with the newest key: the same string when it already
 * is (changed: false), else decrypted and encrypted again (`turnpike keys
 * reencrypt`). Throws DecryptError like decryptSecret.
 */
export function reencryptSecret(keyring: Keyring, value: string, aad?: string): { value: string; changed: boolean } {
  const newest = newestVersion(keyring);
  const plain = decryptSecret(keyring, value, aad); // also authenticates values already at the newest version
  if (encryptedVersion(value) === newest) return { value, changed: false };
  return { value: encryptSecret(keyring, plain, aad), changed: true };
}

// ------------------------------------------------------------------ secrets

/** A secret that cannot be loaded: the message names the reference and what to do. */
export class SecretError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecretError';
  }
}

/** Largest secret file read (bytes): key material is 32-64 bytes of text. */
export const MAX_SECRET_FILE_BYTES = 65_536;

/**
 * The text a secret reference points at: `env:NAME` (process environment,
 * or `env` given) or `file:/path` (relative paths against `cwd`; content
 * trimmed). Throws SecretError for another form, an unset/empty variable, or
 * an unreadable/empty file.
 */
export function resolveSecretRef(ref: string, what: string, env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): string {
  if (ref.startsWith('env:')) {
    const name = ref.slice(4);
    const v = env[name];
    if (name === '' || v === undefined || v.trim() === '') throw new SecretError(`${what}: environment variable ${name || '(no name)'} is not set or empty; set it or use file:/path`);
    return v.trim();
  }
  if (ref.startsWith('file:')) {
    const path = resolve(cwd, ref.slice(5));
    let text: string;
    try {
      // A regular file of a sane size: /dev/zero or a FIFO would hang the read.
      const st = statSync(path);
      if (!st.isFile()) throw new SecretError(`${what}: ${path} is not a regular file; point it at a file holding the secret`);
      if (st.size > MAX_SECRET_FILE_BYTES) throw new SecretError(`${what}: ${path} is ${st.size} bytes, more than a secret (at most ${MAX_SECRET_FILE_BYTES}); point it at the file holding only the secret`);
      text = readFileSync(path, 'utf8').trim();
    } catch (e) {
      if (e instanceof SecretError) throw e;
      throw new SecretError(`${what}: cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); fix the path or its permissions`);
    }
    if (text === '') throw new SecretError(`${what}: ${path} is empty; put the secret in it (e.g. openssl rand -base64 32)`);
    return text;
  }
  throw new SecretError(`${what}: ${JSON.stringify(ref.slice(0, 20))} is not a secret reference; use env:NAME or file:/path (the secret itself never goes in the config)`);
}

/**
 * Key material from text: hex (an even number of hex digits only; 64 for
 * 32 bytes), else base64 / base64url. Throws
 * SecretError when it decodes to fewer than `minBytes` (or, with `exact`,
 * not exactly that many).
 */
export function decodeKeyMaterial(text: string, what: string, minBytes = 32, exact = false): Buffer {
  let buf: Buffer;
  if (/^(?:[0-9a-fA-F]{2})+$/.test(text)) buf = Buffer.from(text, 'hex'); // all hex: hex (a random base64 text is never all hex)
  else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) buf = Buffer.from(text, text.includes('+') || text.includes('/') ? 'base64' : 'base64url');
  else throw new SecretError(`${what}: not hex or base64; generate one with: openssl rand -base64 32`);
  if (exact ? buf.length !== minBytes : buf.length < minBytes) {
    throw new SecretError(`${what}: decodes to ${buf.length} bytes, ${exact ? 'exactly' : 'at least'} ${minBytes} needed; generate one with: openssl rand -base64 32`);
  }
  return buf;
}

/** The `secrets` config section (issue 12): references, never values. */
export interface SecretsConfig {
  /** HMAC key for key hashes: `env:NAME` or `file:/path`. Absent: generated under `dir`. */
  keyPepper?: string;
  /** AES-256-GCM keys by version (`{"2": "env:TURNPIKE_ENC_KEY_2"}`). Absent or empty: version 1 generated under `dir`. */
  encryptionKeys?: Record<string, string>;
}

export interface LoadedSecrets {
  pepper: Buffer;
  keyring: Keyring;
  /** Absolute paths of the files generated by this call (empty when none): log them once, never their content. */
  generated: string[];
}

/**
 * Checks the configured references of `secrets` without generating
 * anything: each must resolve (the variable set, the file readable) to
 * usable key material. Returns the problems (`secrets.keyPepper: ...`),
 * empty when none. For `turnpike validate` and the start, so that a
 * gateway never starts with auth routes it cannot serve.
 */
export function checkSecretRefs(config: SecretsConfig, env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd()): string[] {
  const out: string[] = [];
  const check = (ref: string, what: string, minBytes: number, exact: boolean) => {
    try {
      decodeKeyMaterial(resolveSecretRef(ref, what, env, cwd), what, minBytes, exact);
    } catch (e) {
      out.push(e instanceof SecretError ? e.message : `${what}: ${(e as Error).message}`);
    }
  };
  if (config.keyPepper !== undefined) check(config.keyPepper, 'secrets.keyPepper', 32, false);
  for (const [v, ref] of Object.entries(config.encryptionKeys ?? {})) check(ref, `secrets.encryptionKeys.${v}`, 32, true);
  return out;
}

/** `file:` secret references readable by other users (mode & 0o077): a warning each, as for the generated files (0600). */
export function looseSecretFiles(config: SecretsConfig, cwd: string = process.cwd()): string[] {
  const refs: Array<[string, string]> = [];
  if (config.keyPepper !== undefined) refs.push(['secrets.keyPepper', config.keyPepper]);
  for (const [v, ref] of Object.entries(config.encryptionKeys ?? {})) refs.push([`secrets.encryptionKeys.${v}`, ref]);
  const out: string[] = [];
  for (const [what, ref] of refs) {
    if (!ref.startsWith('file:')) continue;
    const path = resolve(cwd, ref.slice(5));
    try {
      const mode = statSync(path).mode & 0o777;
      if ((mode & 0o077) !== 0) out.push(`${what}: ${path} is readable by other users (mode ${mode.toString(8).padStart(4, '0')}); chmod 600 it`);
    } catch { /* checkSecretRefs reports it */ }
  }
  return out;
}

/** File names of generated secrets under the secrets directory. */
export const GENERATED_PEPPER_FILE = 'key-pepper';
export const generatedEncryptionKeyFile = (version: number): string => `encryption-key-${version}`;

/**
 * Reads `<dir>/<name>` or, when missing, creates it with 32 random bytes
 * (base64url) atomically: written to a temporary file (0600) and hard-linked
 * into place, so a concurrent start either wins or reads the winner's file,
 * never a half-written one. The directory is created 0700.
 */
function readOrGenerate(dir: string, name: string, what: string, generated: string[]): string {
  const path = join(dir, name);
  try {
    const text = readFileSync(path, 'utf8').trim();
    if (text !== '') return text;
    throw new SecretError(`${what}: ${path} is empty; restore it from a backup (keys hashed with it no longer verify otherwise)`);
  } catch (e) {
    if (e instanceof SecretError) throw e;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new SecretError(`${what}: cannot read ${path} (${(e as NodeJS.ErrnoException).code}); fix its permissions`);
  }
  const created = mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (created !== undefined) chmodSync(dir, 0o700);
  const text = randomBytes(32).toString('base64url');
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, text + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(tmp, 0o600);
  try {
    linkSync(tmp, path);
    generated.push(path);
    return text;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    return readFileSync(path, 'utf8').trim(); // another process generated it first
  } finally {
    unlinkSync(tmp);
  }
}

/**
 * The identity secrets: configured references resolved, the missing ones
 * read from (or generated into) files under `dir` (default `.turnpike`
 * under `cwd`; files 0600, directory 0700). Generated files must be kept
 * and backed up with the store: without the pepper no stored key verifies,
 * without an encryption key its values cannot be decrypted. Throws
 * SecretError (bad reference, unreadable file, bad material, a version
 * that is not a positive integer).
 */
export function loadSecrets(
  config: SecretsConfig,
  opts: { dir?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): LoadedSecrets {
  const cwd = opts.cwd ?? process.cwd();
  const dir = resolve(cwd, opts.dir ?? '.turnpike');
  const env = opts.env ?? process.env;
  const generated: string[] = [];
  const pepperText = config.keyPepper !== undefined
    ? resolveSecretRef(config.keyPepper, 'secrets.keyPepper', env, cwd)
    : readOrGenerate(dir, GENERATED_PEPPER_FILE, 'secrets.keyPepper', generated);
  const pepper = decodeKeyMaterial(pepperText, 'secrets.keyPepper');
  const keyring = new Map<number, Buffer>();
  const entries = Object.entries(config.encryptionKeys ?? {});
  for (const [v, ref] of entries) {
    const what = `secrets.encryptionKeys.${v}`;
    if (!/^[1-9][0-9]{0,8}$/.test(v)) throw new SecretError(`${what}: a key version is a positive integer ("1", "2", ...)`);
    keyring.set(Number(v), decodeKeyMaterial(resolveSecretRef(ref, what, env, cwd), what, 32, true));
  }
  if (entries.length === 0) {
    const what = 'secrets.encryptionKeys.1';
    keyring.set(1, decodeKeyMaterial(readOrGenerate(dir, generatedEncryptionKeyFile(1), what, generated), what, 32, true));
  }
  return { pepper, keyring, generated };
}
