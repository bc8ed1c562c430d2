/** API key material (common/identity/keys.ts): format, offline check, hashing, AES-256-GCM, secrets. */
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';

// The real timingSafeEqual, spied on: key-hash comparison must go through it.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  const timingSafeEqual = vi.fn(actual.timingSafeEqual);
  return { ...actual, timingSafeEqual, default: { ...actual, timingSafeEqual } };
});
const crypto = await import('node:crypto');
const K = await import('../../../common/identity/keys.js');
type KeyFormatCode = import('../../../common/identity/keys.js').KeyFormatCode;
type KeyFormatDetail = import('../../../common/identity/keys.js').KeyFormatDetail;
type DecryptErrorCode = import('../../../common/identity/keys.js').DecryptErrorCode;
const spy = vi.mocked(crypto.timingSafeEqual);
beforeEach(() => { spy.mockClear(); });

const KEY_SHAPE = /^tp_([a-z0-9]{1,8})_([0-9A-Za-z]{33})_([0-9A-Za-z]{6})$/;
const b62value = (s: string) => [...s].reduce((n, ch) => n * 62n + BigInt(K.BASE62.indexOf(ch)), 0n);
/** A key with a correct checksum around any body (for shapes generateKey never makes). */
const withChecksum = (body: string) => `${body}_${K.keyChecksum(body)}`;
const tmp = mkdtempSync(join(tmpdir(), 'turnpike-keys-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('generateKey', () => {
  it.each(['live', 'test', 'a', '0', 'abcdefgh', 'stg2'])('env %s: the documented shape, a valid checksum, parsed back', (env) => {
    const key = K.generateKey(env);
    const m = KEY_SHAPE.exec(key);
    expect(m?.[1]).toBe(env);
    expect(key.length).toBe(3 + env.length + 1 + K.RANDOM_CHARS + 1 + K.CHECKSUM_CHARS);
    expect(key.length).toBeLessThanOrEqual(K.MAX_KEY_LENGTH);
    expect(K.checkKeyFormat(key)).toBeNull();
    expect(K.keyFormatDetail(key)).toBeNull();
    expect(K.parseKey(key)).toEqual({ ok: true, env, random: m![2], checksum: m![3] });
    expect(b62value(m![3]!)).toBe(BigInt(K.crc32Ascii(key.slice(0, key.length - 7))));
    expect(K.keyDisplayPrefix(key)).toBe(`tp_${env}_${m![2]!.slice(0, 4)}`);
  });

  it.each(['', 'LIVE', 'abcdefghi', 'a_b', 'li-ve', 'é', ' live'])('refuses env %j', (env) => {
    expect(() => K.generateKey(env)).toThrow(/1-8 of \[a-z0-9\]/);
  });

  it('has at least 128 bits of entropy: 192 random bits in 33 base62 digits, all of them used', () => {
    expect(K.RANDOM_BYTES * 8).toBeGreaterThanOrEqual(128);
    expect(62n ** BigInt(K.RANDOM_CHARS)).toBeGreaterThanOrEqual(2n ** BigInt(K.RANDOM_BYTES * 8));
    expect(62n ** BigInt(K.RANDOM_CHARS - 1)).toBeLessThan(2n ** BigInt(K.RANDOM_BYTES * 8)); // no wasted digit
    const n = 2000;
    const keys = Array.from({ length: n }, () => K.generateKey('live'));
    expect(new Set(keys).size).toBe(n);
    let ones = 0;
    let topBitSeen = false;
    const bitSeen = new Array<number>(192).fill(0);
    for (const key of keys) {
      const v = b62value(K.parseKey(key).ok ? (K.parseKey(key) as { random: string }).random : '');
      expect(v).toBeLessThan(2n ** 192n);
      if (v >= 2n ** 191n) topBitSeen = true;
      for (let b = 0; b < 192; b++) {
        if ((v >> BigInt(b)) & 1n) {
          ones++;
          bitSeen[b]!++;
        }
      }
    }
    // 384,000 bits: the count of ones is 192,000 +- 310 (one sd); 3,000 is ~10 sd.
    expect(Math.abs(ones - n * 96)).toBeLessThan(3000);
    expect(topBitSeen).toBe(true);
    // Every bit position varies (a stuck bit would be 0 or n).
    expect(bitSeen.every((c) => c > n * 0.35 && c < n * 0.65)).toBe(true);
  });
});

describe('offline check: every malformation class has its code', () => {
  const good = K.generateKey('live');
  const body = good.slice(0, good.length - 7);
  const random = good.slice(8, 41);
  const cases: Array<[string, string, KeyFormatCode, KeyFormatDetail]> = [
    ['empty', '', 'key_malformed', 'empty'],
    ['10 KB', 'a'.repeat(10 * 1024), 'key_malformed', 'too_long'],
    ['10 KB of a valid key repeated', good.repeat(250), 'key_malformed', 'too_long'],
    ['one over the maximum', withChecksum('tp_live_' + 'A'.repeat(K.MAX_KEY_LENGTH - 8 - 7 + 1)), 'key_malformed', 'too_long'],
    ['non-ASCII letter', good.slice(0, 10) + 'é' + good.slice(11), 'key_malformed', 'non_ascii'],
    ['non-ASCII env', 'tp_lïve_' + good.slice(8), 'key_malformed', 'non_ascii'],
    ['emoji', good.slice(0, 20) + '😀' + good.slice(22), 'key_malformed', 'non_ascii'],
    ['fullwidth digit', good.slice(0, 40) + '１' + good.slice(41), 'key_malformed', 'non_ascii'],
    ['latin1 byte past 0x7f', good + '\u0080', 'key_malformed', 'non_ascii'],
    ['no prefix', good.slice(3), 'key_malformed', 'prefix'],
    ['upper-case prefix', 'TP' + good.slice(2), 'key_malformed', 'prefix'],
    ['dash prefix', 'tp-' + good.slice(3), 'key_malformed', 'prefix'],
    ['leading space', ' ' + good.slice(0, -1), 'key_malformed', 'prefix'],
    ['too short', 'tp', 'key_malformed', 'prefix'],
    ['Bearer left in', 'Bearer ' + good.slice(0, 50), 'key_malformed', 'prefix'],
    ['prefix only', 'tp_', 'key_malformed', 'env'],
    ['empty env', withChecksum('tp__' + random), 'key_malformed', 'env'],
    ['upper-case env', withChecksum('tp_LIVE_' + random), 'key_malformed', 'env'],
    ['env of 9', withChecksum('tp_abcdefghi_' + random), 'key_malformed', 'env'],
    ['env with a dash', withChecksum('tp_li-ve_' + random), 'key_malformed', 'env'],
    ['env without end', 'tp_live', 'key_malformed', 'env'],
    ['random too short', withChecksum('tp_live_' + random.slice(1)), 'key_malformed', 'random'],
    ['random too long', withChecksum('tp_live_' + random + 'A'), 'key_malformed', 'random'],
    ['random with a dash', withChecksum('tp_live_' + random.slice(0, 10) + '-' + random.slice(11)), 'key_malformed', 'random'],
    ['random with a space', withChecksum('tp_live_' + random.slice(0, 10) + ' ' + random.slice(11)), 'key_malformed', 'random'],
    ['no checksum', body, 'key_malformed', 'random'],
    ['empty checksum', body + '_', 'key_malformed', 'checksum_chars'],
    ['checksum too short', good.slice(0, -1), 'key_malformed', 'checksum_chars'],
    ['checksum too long', good + 'A', 'key_malformed', 'checksum_chars'],
    ['trailing newline', good + '\n', 'key_malformed', 'checksum_chars'],
    ['checksum with +', good.slice(0, -1) + '+', 'key_malformed', 'checksum_chars'],
    ['wrong checksum', body + '_' + (good.endsWith('000000') ? '000001' : '000000'), 'key_checksum', 'checksum'],
    ['truncated random, checksum of the whole', body.slice(0, -1) + good.slice(-7), 'key_malformed', 'random'],
  ];
  it.each(cases)('%s', (_what, key, code, detail) => {
    expect(K.keyFormatDetail(key)).toBe(detail);
    expect(K.checkKeyFormat(key)).toBe(code);
    expect(K.parseKey(key)).toEqual({ ok: false, code, detail });
  });

  it('the longest accepted shape is within MAX_KEY_LENGTH', () => {
    const longest = K.generateKey('abcdefgh');
    expect(longest.length).toBe(52);
    expect(K.checkKeyFormat(longest)).toBeNull();
  });

  it('every single-character change at every position is refused; alphabet changes where the shape allows are key_checksum', () => {
    const alphabet = K.BASE62 + '_-. ~';
    for (let n = 0; n < 15; n++) {
      const key = K.generateKey(n % 2 ? 'live' : 'test');
      const envEnd = key.indexOf('_', 3);
      for (let i = 0; i < key.length; i++) {
        for (const ch of alphabet) {
          if (ch === key[i]) continue;
          const bad = key.slice(0, i) + ch + key.slice(i + 1);
          const code = K.checkKeyFormat(bad);
          expect(code, `${bad} (position ${i})`).not.toBeNull();
          const inRandomOrChecksum = i > envEnd && key[i] !== '_';
          const inEnv = i > 2 && i < envEnd;
          const shapeKept = (inRandomOrChecksum && K.BASE62.includes(ch)) || (inEnv && /[a-z0-9]/.test(ch));
          if (shapeKept) expect(code, `${bad} (position ${i})`).toBe('key_checksum');
        }
      }
    }
  });

  it('adjacent transpositions in the random part and checksum are refused', () => {
    for (let n = 0; n < 50; n++) {
      const key = K.generateKey('live');
      for (let i = 8; i < key.length - 1; i++) {
        if (key[i] === key[i + 1] || key[i] === '_' || key[i + 1] === '_') continue;
        const bad = key.slice(0, i) + key[i + 1] + key[i] + key.slice(i + 2);
        expect(K.checkKeyFormat(bad), bad).toBe('key_checksum');
      }
    }
  });

  it('crc32Ascii is the standard CRC-32 (check value of "123456789" is 0xCBF43926)', () => {
    expect(K.crc32Ascii('123456789')).toBe(0xcbf43926);
    expect(K.crc32Ascii('')).toBe(0);
    expect(K.crc32Ascii('The quick brown fox jumps over the lazy dog')).toBe(0x414fa339);
  });
});

describe('hashing', () => {
  const pepper = Buffer.alloc(32, 7);
  it('is HMAC-SHA256(pepper, key), base64url, 43 chars; another pepper gives another hash', () => {
    const key = K.generateKey('live');
    const h = K.hashKey(pepper, key);
    expect(h).toBe(createHmac('sha256', pepper).update(key).digest('base64url'));
    expect(h).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(K.hashKey(pepper, key)).toBe(h);
    expect(K.hashKey(Buffer.alloc(32, 8), key)).not.toBe(h);
    expect(h).not.toContain(key.slice(8, 20));
  });

  it('keyHashEquals compares through timingSafeEqual', () => {
    const a = K.hashKey(pepper, K.generateKey('live'));
    const b = K.hashKey(pepper, K.generateKey('live'));
    expect(K.keyHashEquals(a, a)).toBe(true);
    expect(K.keyHashEquals(a, b)).toBe(false);
    expect(K.keyHashEquals(a, a.slice(0, -1) + (a.endsWith('A') ? 'B' : 'A'))).toBe(false);
    expect(spy).toHaveBeenCalledTimes(3);
    expect(K.keyHashEquals(a, a.slice(1))).toBe(false); // lengths differ: no comparison needed
    expect(spy).toHaveBeenCalledTimes(3);
  });
});

describe('AES-256-GCM with key versions', () => {
  const k1 = Buffer.alloc(32, 1);
  const k2 = Buffer.alloc(32, 2);
  const ring1 = new Map([[1, k1]]);
  const ring12 = new Map([[1, k1], [2, k2]]);
  const ring2 = new Map([[2, k2]]);

  it.each([
    ['empty', ''],
    ['short', 'x'],
    ['unicode', 'clé secrète 🔑'],
    ['a signing secret', 'whsec_' + 'a'.repeat(64)],
    ['1 MB', 'z'.repeat(1 << 20)],
  ])('round trip: %s', (_what, plain) => {
    const enc = K.encryptSecret(ring12, plain);
    expect(enc).toMatch(/^v2:[A-Za-z0-9_-]{16}:[A-Za-z0-9_-]*:[A-Za-z0-9_-]{22}$/);
    expect(K.encryptedVersion(enc)).toBe(2);
    expect(K.decryptSecret(ring12, enc).toString('utf8')).toBe(plain);
    expect(K.decryptSecret(ring2, enc).toString('utf8')).toBe(plain);
    // The plaintext is not there in the clear. Its first 8 base64url characters would match random
    // ciphertext by chance about once in 10^13; fewer (a 1-byte secret: 2 characters) match often,
    // and one short ciphertext may equal its plaintext by chance (1 in 256 per byte): there, of 16
    // encryptions (random IVs) some must differ from the plaintext.
    const clear = Buffer.from(plain).toString('base64url');
    if (clear.length >= 8) expect(enc).not.toContain(clear.slice(0, 8));
    else if (plain.length > 0) {
      const bodies = Array.from({ length: 16 }, () => K.encryptSecret(ring12, plain).split(':')[2]);
      expect(bodies.some((b) => b !== clear)).toBe(true);
    }
  });

  it('a fresh IV each time: the same plaintext never encrypts the same', () => {
    const seen = new Set(Array.from({ length: 200 }, () => K.encryptSecret(ring1, 'same')));
    expect(seen.size).toBe(200);
    expect(new Set([...seen].map((v) => v.split(':')[1])).size).toBe(200);
  });

  it('tampering with any character of IV, ciphertext or tag is detected', () => {
    const enc = K.encryptSecret(ring1, 'a secret worth keeping');
    const start = enc.indexOf(':') + 1;
    let tried = 0;
    for (let i = start; i < enc.length; i++) {
      if (enc[i] === ':') continue;
      const ch = enc[i] === 'A' ? 'B' : 'A';
      const bad = enc.slice(0, i) + ch + enc.slice(i + 1);
      let err: unknown = null;
      try {
        K.decryptSecret(ring1, bad);
      } catch (e) {
        err = e;
      }
      // The last char of a base64url part may carry only padding bits: changing those can decode to the same bytes.
      if (err === null) {
        const part = bad.slice(start).split(':');
        const orig = enc.slice(start).split(':');
        expect(part.map((p) => Buffer.from(p, 'base64url').toString('hex'))).toEqual(orig.map((p) => Buffer.from(p, 'base64url').toString('hex')));
        continue;
      }
      tried++;
      expect(err).toBeInstanceOf(K.DecryptError);
      expect(['enc_auth_failed', 'enc_malformed']).toContain((err as InstanceType<typeof K.DecryptError>).code);
    }
    expect(tried).toBeGreaterThan(60);
  });

  it.each<[string, string, DecryptErrorCode]>([
    ['empty', '', 'enc_malformed'],
    ['no version', 'AAAA:BBBB:CCCC', 'enc_malformed'],
    ['version 0', 'v0:AAAAAAAAAAAAAAAA::AAAAAAAAAAAAAAAAAAAAAA', 'enc_malformed'],
    ['short tag', 'v1:AAAAAAAAAAAAAAAA:AA:AAAA', 'enc_malformed'],
    ['not base64url', 'v1:AAAAAAAAAAAAAAA+::AAAAAAAAAAAAAAAAAAAAAA', 'enc_malformed'],
    ['unknown version', 'v7:AAAAAAAAAAAAAAAA:AA:AAAAAAAAAAAAAAAAAAAAAA', 'enc_unknown_version'],
    ['zeros', 'v1:AAAAAAAAAAAAAAAA:AA:AAAAAAAAAAAAAAAAAAAAAA', 'enc_auth_failed'],
  ])('malformed: %s -> %s', (_what, value, code) => {
    expect(() => K.decryptSecret(ring1, value)).toThrow(expect.objectContaining({ code }));
  });

  it('a wrong key of the same version, or other associated data, fails authentication', () => {
    const enc = K.encryptSecret(ring1, 'secret', 'key_123');
    expect(K.decryptSecret(ring1, enc, 'key_123').toString()).toBe('secret');
    expect(() => K.decryptSecret(ring1, enc, 'key_124')).toThrow(expect.objectContaining({ code: 'enc_auth_failed' }));
    expect(() => K.decryptSecret(ring1, enc)).toThrow(expect.objectContaining({ code: 'enc_auth_failed' }));
    expect(() => K.decryptSecret(new Map([[1, Buffer.alloc(32, 9)]]), enc, 'key_123')).toThrow(expect.objectContaining({ code: 'enc_auth_failed' }));
  });

  it('key version rotation: reencrypt moves a value to the newest version once; the old key can then go', () => {
    const old = K.encryptSecret(ring1, 'signing secret', 'aad');
    expect(K.encryptedVersion(old)).toBe(1);
    expect(() => K.decryptSecret(ring2, old, 'aad')).toThrow(expect.objectContaining({ code: 'enc_unknown_version' }));
    const moved = K.reencryptSecret(ring12, old, 'aad');
    expect(moved.changed).toBe(true);
    expect(K.encryptedVersion(moved.value)).toBe(2);
    expect(K.decryptSecret(ring2, moved.value, 'aad').toString()).toBe('signing secret');
    expect(K.reencryptSecret(ring12, moved.value, 'aad')).toEqual({ value: moved.value, changed: false });
    expect(() => K.reencryptSecret(ring12, moved.value.replace(/.$/, (c) => (c === 'A' ? 'Q' : 'A')), 'aad')).toThrow(K.DecryptError);
    expect(() => K.reencryptSecret(ring12, old, 'other')).toThrow(expect.objectContaining({ code: 'enc_auth_failed' }));
    expect(() => K.encryptSecret(new Map(), 'x')).toThrow(/no encryption key/);
  });
});

describe('secrets: references, material, first-start generation', () => {
  const hex = 'ab'.repeat(32);
  const b64 = Buffer.alloc(32, 3).toString('base64');
  const b64url = Buffer.alloc(48, 250).toString('base64url');

  it('resolves env: and file: references; refuses everything else with what to do', () => {
    const bigFile = join(tmp, 'big.txt');
    writeFileSync(bigFile, 'a'.repeat(70_000));
    const file = join(tmp, 'pepper.txt');
    writeFileSync(file, `  ${hex}\n`);
    expect(K.resolveSecretRef('env:P', 'x', { P: ` ${hex} ` })).toBe(hex);
    expect(K.resolveSecretRef(`file:${file}`, 'x')).toBe(hex);
    expect(K.resolveSecretRef('file:pepper.txt', 'x', {}, tmp)).toBe(hex);
    const bad: Array<[string, NodeJS.ProcessEnv, RegExp]> = [
      ['env:MISSING', {}, /MISSING is not set or empty; set it/],
      ['env:EMPTY', { EMPTY: '  ' }, /EMPTY is not set or empty/],
      ['env:', {}, /\(no name\)/],
      [`file:${join(tmp, 'nope')}`, {}, /cannot read .*nope \(ENOENT\)/],
      [`file:${tmp}`, {}, /is not a regular file/],
      // A device or a FIFO would hang the read: refused before reading.
      ['file:/dev/zero', {}, /is not a regular file/],
      [`file:${bigFile}`, {}, /more than a secret \(at most 65536\)/],
      [hex, {}, /not a secret reference; use env:NAME or file:\/path/],
      ['vault:x', {}, /not a secret reference/],
    ];
    for (const [ref, env, msg] of bad) expect(() => K.resolveSecretRef(ref, 'secrets.keyPepper', env)).toThrow(msg);
    writeFileSync(join(tmp, 'empty'), '\n');
    expect(() => K.resolveSecretRef(`file:${join(tmp, 'empty')}`, 'x')).toThrow(/is empty/);
    // The secret value never appears in a message.
    try {
      K.resolveSecretRef('s3cr3t-value-here-0123456789', 'x');
    } catch (e) {
      expect((e as Error).message).not.toContain('0123456789');
    }
  });

  it.each<[string, string, number, boolean, number | RegExp]>([
    ['64 hex', hex, 32, true, 32],
    ['base64', b64, 32, true, 32],
    ['base64url of 48 bytes as a pepper', b64url, 32, false, 48],
    ['base64url of 48 bytes as an AES key', b64url, 32, true, /decodes to 48 bytes, exactly 32/],
    ['too short', Buffer.alloc(16).toString('base64'), 32, false, /decodes to 16 bytes, at least 32/],
    ['a passphrase', 'correct horse battery staple!', 32, false, /not hex or base64/],
  ])('key material: %s', (_what, text, min, exact, want) => {
    if (typeof want === 'number') expect(K.decodeKeyMaterial(text, 'x', min, exact).length).toBe(want);
    else expect(() => K.decodeKeyMaterial(text, 'x', min, exact)).toThrow(want);
  });

  it('first start generates the pepper and encryption key 1 (0600 in a 0700 dir) and says so once', () => {
    const cwd = join(tmp, 'gen');
    const first = K.loadSecrets({}, { cwd, env: {} });
    const dir = join(cwd, '.turnpike');
    expect(first.generated).toEqual([join(dir, 'key-pepper'), join(dir, 'encryption-key-1')]);
    for (const f of first.generated) expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(first.pepper.length).toBe(32);
    expect([...first.keyring.keys()]).toEqual([1]);
    const second = K.loadSecrets({}, { cwd, env: {} });
    expect(second.generated).toEqual([]);
    expect(second.pepper.equals(first.pepper)).toBe(true);
    expect(second.keyring.get(1)!.equals(first.keyring.get(1)!)).toBe(true);
    expect(readFileSync(first.generated[0]!, 'utf8').trim()).toBe(first.pepper.toString('base64url'));
    // No temporary file left behind.
    expect(existsSync(dir) && readdirSync(dir).sort()).toEqual(['encryption-key-1', 'key-pepper']);
    // Two fresh peppers differ.
    const other = K.loadSecrets({}, { cwd: join(tmp, 'gen2'), env: {} });
    expect(other.pepper.equals(first.pepper)).toBe(false);
  });

  it('configured secrets are used and nothing is generated; a custom dir is honoured', () => {
    const cwd = join(tmp, 'conf');
    const s = K.loadSecrets({ keyPepper: 'env:PEP', encryptionKeys: { '2': 'env:E2', '10': 'env:E10' } }, { cwd, env: { PEP: hex, E2: b64, E10: hex } });
    expect(s.generated).toEqual([]);
    expect(s.pepper.equals(Buffer.from(hex, 'hex'))).toBe(true);
    expect(K.newestVersion(s.keyring)).toBe(10);
    expect(existsSync(join(cwd, '.turnpike'))).toBe(false);
    const d = K.loadSecrets({ keyPepper: 'env:PEP' }, { cwd, dir: 'secrets', env: { PEP: hex } });
    expect(d.generated).toEqual([join(cwd, 'secrets', 'encryption-key-1')]);
  });

  it.each<[string, Parameters<typeof K.loadSecrets>[0], NodeJS.ProcessEnv, RegExp]>([
    ['version 0', { encryptionKeys: { '0': 'env:E' } }, { E: hex }, /encryptionKeys\.0: a key version is a positive integer/],
    ['version text', { encryptionKeys: { v2: 'env:E' } }, { E: hex }, /encryptionKeys\.v2: a key version/],
    ['short AES key', { encryptionKeys: { '1': 'env:E' } }, { E: 'ab'.repeat(16) }, /encryptionKeys\.1: decodes to 16 bytes/],
    ['pepper not set', { keyPepper: 'env:NOPE' }, {}, /secrets\.keyPepper: environment variable NOPE/],
  ])('refuses %s', (_what, config, env, msg) => {
    expect(() => K.loadSecrets(config, { cwd: join(tmp, 'bad'), env })).toThrow(msg);
  });

  it('an emptied generated file is refused, not silently replaced (keys hashed with it would stop verifying)', () => {
    const cwd = join(tmp, 'emptied');
    K.loadSecrets({}, { cwd, env: {} });
    writeFileSync(join(cwd, '.turnpike', 'key-pepper'), '');
    expect(() => K.loadSecrets({}, { cwd, env: {} })).toThrow(/key-pepper is empty; restore it from a backup/);
  });
});
