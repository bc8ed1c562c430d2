/** Admin tokens: constant-time comparison, tokens file parsing, sources, generated token. */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it, vi } from 'vitest';

// Spy on the real timingSafeEqual: the comparison must go through it, with
// fixed-length digests, whatever the token lengths.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  const timingSafeEqual = vi.fn(actual.timingSafeEqual);
  return { ...actual, timingSafeEqual, default: { ...actual, timingSafeEqual } };
});

const crypto = await import('node:crypto');
const {
  AuthConfigError, TokenStore, bearerToken, clientToken, loadTokens, parseTokensFile, removeGeneratedToken, tokenDigest, tokensEqual,
  writeGeneratedToken,
} = await import('../../../admin/api/auth.js');

const spy = vi.mocked(crypto.timingSafeEqual);
const sha = (t: string) => createHash('sha256').update(t).digest('hex');

beforeEach(() => { spy.mockClear(); });

describe('tokensEqual (constant time)', () => {
  it('accepts equal tokens through timingSafeEqual over 32-byte digests', () => {
    expect(tokensEqual('s3cret-token-value', 's3cret-token-value')).toBe(true);
    expect(spy).toHaveBeenCalledTimes(1);
    const [a, b] = spy.mock.calls[0]!;
    expect([(a as Buffer).length, (b as Buffer).length]).toEqual([32, 32]);
  });

  it('refuses unequal tokens of the same length', () => {
    expect(tokensEqual('s3cret-token-value', 's3cret-token-valuX')).toBe(false);
    expect(spy).toHaveBeenCalledTimes(1);
  });

  it('refuses tokens of different lengths without throwing (digests have a fixed length)', () => {
    expect(tokensEqual('short', 'a-much-longer-token-than-that')).toBe(false);
    expect(tokensEqual('', 'x')).toBe(false);
    expect(spy).toHaveBeenCalledTimes(2);
    for (const [a, b] of spy.mock.calls) expect([(a as Buffer).length, (b as Buffer).length]).toEqual([32, 32]);
  });

  it('TokenStore compares with every entry, with no early exit', () => {
    const store = new TokenStore([
      { name: 'a', role: 'admin', digest: tokenDigest('token-a-0123456789'), origin: 't:1' },
      { name: 'b', role: 'viewer', digest: tokenDigest('token-b-0123456789'), origin: 't:2' },
      { name: 'c', role: 'viewer', digest: tokenDigest('token-c-0123456789'), origin: 't:3' },
    ]);
    expect(store.authenticate('token-a-0123456789')).toEqual({ name: 'a', role: 'admin' });
    expect(spy).toHaveBeenCalledTimes(3);
    expect(store.authenticate('token-c-0123456789')).toEqual({ name: 'c', role: 'viewer' });
    expect(store.authenticate('nope')).toBeNull();
    expect(spy).toHaveBeenCalledTimes(9);
  });
});

describe('bearerToken', () => {
  it('reads "Bearer <token>" only', () => {
    expect(bearerToken('Bearer abc.def-123')).toBe('abc.def-123');
    expect(bearerToken('bearer   abc ')).toBe('abc');
    expect(bearerToken(undefined)).toBeNull();
    expect(bearerToken('Basic dXNlcjpwYXNz')).toBeNull();
    expect(bearerToken('Bearer')).toBeNull();
    expect(bearerToken('Bearer a b')).toBeNull();
  });
});

describe('tokens file', () => {
  it('parses names, roles and hashes; comments and blank lines are skipped', () => {
    const text = `# admin tokens\n\nalice viewer sha256:${sha('alice-token')}\nops   admin  sha256:${sha('ops-token').toUpperCase()}   # on-call\n`;
    const entries = parseTokensFile(text, 'tokens.txt');
    expect(entries.map((e) => [e.name, e.role, e.origin])).toEqual([['alice', 'viewer', 'tokens.txt:3'], ['ops', 'admin', 'tokens.txt:4']]);
    expect(entries[0]!.digest.equals(tokenDigest('alice-token'))).toBe(true);
    expect(entries[1]!.digest.equals(tokenDigest('ops-token'))).toBe(true);
    const store = new TokenStore(entries);
    expect(store.authenticate('ops-token')).toEqual({ name: 'ops', role: 'admin' });
    expect(store.authenticate('alice-token')).toEqual({ name: 'alice', role: 'viewer' });
  });

  it('names every bad line', () => {
    const text = [
      `ok admin sha256:${sha('x')}`,
      'plain admin my-plaintext-token',
      `bob root sha256:${sha('y')}`,
      'only-two fields',
      `dup viewer sha256:${sha('x')}`,
      `b@d! viewer sha256:${sha('z')}`,
    ].join('\n');
    let err: Error | null = null;
    try { parseTokensFile(text, 'tokens.txt'); } catch (e) { err = e as Error; }
    expect(err).toBeInstanceOf(AuthConfigError);
    const m = err!.message;
    expect(m).toContain('5 bad lines');
    expect(m).toContain('tokens.txt:2: the token must be stored as sha256:<64 hex digits>');
    expect(m).toContain('tokens.txt:3: unknown role "root"; use admin or viewer');
    expect(m).toContain('tokens.txt:4: expected "name role sha256:<64 hex digits>", got 2 fields');
    expect(m).toContain('tokens.txt:5: the same token is already listed on line 1');
    expect(m).toContain('tokens.txt:6: invalid token name "b@d!"');
    expect(m).not.toContain('my-plaintext-token');
  });
});

describe('token sources', () => {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-auth-'));

  it('TURNPIKE_ADMIN_TOKEN is role admin, name env; the tokens file adds its entries', () => {
    const file = join(dir, 'tokens');
    writeFileSync(file, `v viewer sha256:${sha('viewer-token-123456')}\n`);
    const { entries, warnings } = loadTokens({ env: { TURNPIKE_ADMIN_TOKEN: 'env-token-0123456789' }, tokensFile: 'tokens', cwd: dir });
    expect(warnings).toEqual([]);
    const store = new TokenStore(entries);
    expect(store.authenticate('env-token-0123456789')).toEqual({ name: 'env', role: 'admin' });
    expect(store.authenticate('viewer-token-123456')).toEqual({ name: 'v', role: 'viewer' });
  });

  it('TURNPIKE_ADMIN_TOKEN_FILE holds the token; short tokens warn; conflicts and missing files are errors', () => {
    writeFileSync(join(dir, 'tok'), 'from-a-file\n');
    const r = loadTokens({ env: { TURNPIKE_ADMIN_TOKEN_FILE: 'tok' }, tokensFile: null, cwd: dir });
    expect(new TokenStore(r.entries).authenticate('from-a-file')).toEqual({ name: 'env', role: 'admin' });
    expect(r.warnings[0]).toMatch(/shorter than 16/);
    expect(() => loadTokens({ env: { TURNPIKE_ADMIN_TOKEN: 'a', TURNPIKE_ADMIN_TOKEN_FILE: 'tok' }, tokensFile: null, cwd: dir })).toThrow(/keep one/);
    expect(() => loadTokens({ env: {}, tokensFile: 'missing', cwd: dir })).toThrow(/admin.tokensFile: cannot read .*missing.* \(not found\)/);
    expect(() => loadTokens({ env: { TURNPIKE_ADMIN_TOKEN: '' }, tokensFile: null, cwd: dir })).toThrow(/empty/);
    expect(loadTokens({ env: {}, tokensFile: null, cwd: dir }).entries).toEqual([]);
  });

  it('writes a generated token with mode 0600 in a 0700 directory, and clients find it', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'turnpike-gen-'));
    const { token, path } = writeGeneratedToken(cwd, 9901);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(path).toBe(join(cwd, '.turnpike', 'admin-token-9901'));
    expect(readFileSync(path, 'utf8')).toBe(token + '\n');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(cwd, '.turnpike')).mode & 0o777).toBe(0o700);
    expect(clientToken({}, cwd, 9901)).toEqual({ token, from: join('.turnpike', 'admin-token-9901') });
    expect(clientToken({ TURNPIKE_ADMIN_TOKEN: 'x' }, cwd, 9901)).toEqual({ token: 'x', from: 'TURNPIKE_ADMIN_TOKEN' });
    // A second start on the same port replaces it.
    const again = writeGeneratedToken(cwd, 9901);
    expect(again.token).not.toBe(token);
    expect(readFileSync(path, 'utf8')).toBe(again.token + '\n');
  });

  it('names generated tokens by admin port: one per gateway, the legacy name read last, removed on stop', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'turnpike-gen-'));
    const a = writeGeneratedToken(cwd, 9901);
    const b = writeGeneratedToken(cwd, 9902);
    expect(readFileSync(a.path, 'utf8').trim()).toBe(a.token);
    expect(clientToken({}, cwd, 9901)?.token).toBe(a.token);
    expect(clientToken({}, cwd, 9902)?.token).toBe(b.token);
    // No file for that port and no legacy file: nothing to send.
    expect(clientToken({}, cwd, 9903)).toBeNull();
    // A gateway of an older version wrote .turnpike/admin-token: read last.
    writeFileSync(join(cwd, '.turnpike', 'admin-token'), 'legacy-token\n');
    expect(clientToken({}, cwd, 9903)).toEqual({ token: 'legacy-token', from: join('.turnpike', 'admin-token') });
    expect(clientToken({}, cwd, 9902)?.token).toBe(b.token);
    // TURNPIKE_ADMIN_TOKEN_FILE comes before the generated files.
    writeFileSync(join(cwd, 'mine'), 'from-env-file\n');
    expect(clientToken({ TURNPIKE_ADMIN_TOKEN_FILE: 'mine' }, cwd, 9901)).toEqual({ token: 'from-env-file', from: 'TURNPIKE_ADMIN_TOKEN_FILE' });
    // Removed only while it still holds that gateway's token.
    removeGeneratedToken(b.path, tokenDigest('some other token'));
    expect(existsSync(b.path)).toBe(true);
    removeGeneratedToken(b.path, tokenDigest(b.token));
    expect(existsSync(b.path)).toBe(false);
    expect(existsSync(a.path)).toBe(true);
  });
});
