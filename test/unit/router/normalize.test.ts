import { describe, expect, it } from 'vitest';
import { normalizeHost, normalizePath } from '../../../workers/router/normalize.js';
import { isDecodable, queryHas, safeDecode } from '../../../workers/router/predicates.js';

describe('normalizePath', () => {
  it('returns a clean path unchanged (same string)', () => {
    for (const p of ['/', '/a', '/a/b/c', '/a/', "/users/:id;v=1/@x/!$&'()*+,=~-_.", '/a.b/c..d/...']) {
      expect(normalizePath(p)).toBe(p);
    }
    const s = '/repos/julienschmidt/httprouter/stargazers';
    expect(Object.is(normalizePath(s), s)).toBe(true);
  });

  const table: Array<[string, string | null]> = [
    // must start with '/'
    ['', null],
    ['a/b', null],
    ['*', null],
    ['http://x/a', null],
    // unreserved escapes are decoded, others kept with uppercase hex
    ['/%61%62%63', '/abc'],
    ['/%7euser', '/~user'],
    ['/a%2db%2Ec%5Fd', '/a-b.c_d'],
    ['/a%2fb', '/a%2Fb'],
    ['/a%2Fb', '/a%2Fb'],
    ['/a%3a%40%21', '/a%3A%40%21'],
    ['/caf%c3%a9', '/caf%C3%A9'],
    ['/%e2%82%ac', '/%E2%82%AC'],
    // raw printable non-pchars are encoded
    ['/a b', '/a%20b'],
    ['/a|b', '/a%7Cb'],
    ['/{x}', '/%7Bx%7D'],
    ['/a"b<c>d`e^f[g]h', '/a%22b%3Cc%3Ed%60e%5Ef%5Bg%5Dh'],
    ['/a#b', '/a%23b'],
    // invalid escapes
    ['/%zz', null],
    ['/%G1', null],
    ['/%4', null],
    ['/%', null],
    ['/a%', null],
    ['/a%2', null],
    ['/%%41', null],
    // NUL, controls, DEL, backslash, non-ASCII
    ['/%00', null],
    ['/a%00b', null],
    ['/a\u0000b', null],
    ['/a\tb', null],
    ['/a\r\nb', null],
    ['/a\u007fb', null],
    ['/a\\b', null],
    ['/a\\..\\b', null],
    ['/caf\u00e9', null],
    ['/\u00c3\u00a9', null], // UTF-8 bytes handed over as latin1
    ['/\u20ac', null],
    ['/\ud83d\ude00', null],
    // merged slashes
    ['//a///b', '/a/b'],
    ['//', '/'],
    ['///', '/'],
    ['/a//', '/a/'],
    // dot segments (RFC 3986 5.2.4), after decoding
    ['/.', '/'],
    ['/..', '/'],
    ['/a/.', '/a/'],
    ['/a/..', '/'],
    ['/a/b/..', '/a/'],
    ['/a/b/../c', '/a/c'],
    ['/a/./b/', '/a/b/'],
    ['/a/../../../b', '/b'],
    ['/a/%2e%2e/b', '/b'],
    ['/a/%2E%2e/b', '/b'],
    ['/a/.%2e/b', '/b'],
    ['/a/%2e/b', '/a/b'],
    ['/.well-known/x', '/.well-known/x'],
    ['/a/.../b', '/a/.../b'],
    ['/a/..b/c', '/a/..b/c'],
    // encoded slashes never become separators, so these are ordinary segments
    ['/public/..%2fadmin', '/public/..%2Fadmin'],
    ['/public/..%2Fadmin', '/public/..%2Fadmin'],
    ['/public/%2e%2e%2fadmin', '/public/..%2Fadmin'],
    ['/a/..%5c..%5cb', '/a/..%5C..%5Cb'],
    // overlong UTF-8 for '.' and '/' stays encoded: not a dot, not a slash
    ['/a/%c0%ae%c0%ae/b', '/a/%C0%AE%C0%AE/b'],
    ['/a/%c0%af', '/a/%C0%AF'],
    ['/a/%e0%80%ae', '/a/%E0%80%AE'],
    // double encoding is decoded once at most
    ['/a/%252e%252e/b', '/a/%252e%252e/b'],
    ['/a/%25', '/a/%25'],
  ];

  it.each(table)('%j -> %j', (input, want) => {
    expect(normalizePath(input)).toBe(want);
  });

  it('handles very long paths', () => {
    const long = '/' + 'a/'.repeat(50_000);
    expect(normalizePath(long)).toBe(long);
    const dots = '/' + '../'.repeat(20_000) + 'x';
    expect(normalizePath(dots)).toBe('/x');
    const enc = '/' + '%41'.repeat(30_000);
    expect(normalizePath(enc)).toBe('/' + 'A'.repeat(30_000));
  });

  it('is idempotent and total on random input (seeded)', () => {
    const alphabet = ['a', 'B', '0', '/', '/', '.', '..', '%', '%2e', '%2E', '%2f', '%41', '%7e', '%00', '%c3%a9', '~', '-', ' ', '|', '\\', '\u00e9', ':', '@', '!', '%g', '?', '#'];
    let seed = 12345;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed / 4294967296;
    };
    let ok = 0;
    for (let i = 0; i < 20_000; i++) {
      let p = '/';
      const n = Math.floor(rnd() * 12);
      for (let k = 0; k < n; k++) p += alphabet[Math.floor(rnd() * alphabet.length)];
      const once = normalizePath(p);
      if (once === null) continue;
      ok++;
      expect(normalizePath(once), p).toBe(once);
      expect(once.startsWith('/')).toBe(true);
      expect(once, p).not.toMatch(/\/\/|\/\.\.?(\/|$)|%(?![0-9A-F]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]/);
    }
    expect(ok).toBeGreaterThan(5000);
  });
});

describe('normalizeHost', () => {
  const table: Array<[string | undefined, string]> = [
    [undefined, ''],
    ['', ''],
    ['example.com', 'example.com'],
    ['Example.COM', 'example.com'],
    ['example.com:8080', 'example.com'],
    ['EXAMPLE.com.:443', 'example.com'],
    ['example.com.', 'example.com'],
    ['127.0.0.1:80', '127.0.0.1'],
    ['[::1]', '[::1]'],
    ['[::1]:8080', '[::1]'],
    ['[2001:DB8::1]:443', '[2001:db8::1]'],
    ['::1', '::1'],
    ['[::1', '[::1'],
  ];
  it.each(table)('%j -> %j', (input, want) => {
    expect(normalizeHost(input)).toBe(want);
  });
  it('returns the same string when nothing changes', () => {
    const h = 'api.example.com';
    expect(Object.is(normalizeHost(h), h)).toBe(true);
  });
});

describe('query decoding without try/catch', () => {
  it('isDecodable agrees with decodeURIComponent on random escapes (seeded)', () => {
    const parts = ['a', '%', '%4', '%41', '%7F', '%80', '%BF', '%C0', '%C1', '%C2', '%DF', '%E0', '%E1', '%ED', '%EE', '%EF', '%F0', '%F4', '%F5', '%FF', '%A0', '%9F', '%8F', '%90', '%zz', '+', '\u00e9'];
    let seed = 99;
    const rnd = (): number => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed / 4294967296;
    };
    let valid = 0;
    for (let i = 0; i < 50_000; i++) {
      let s = '';
      const n = 1 + Math.floor(rnd() * 5);
      for (let k = 0; k < n; k++) s += parts[Math.floor(rnd() * parts.length)];
      let expected: string | null;
      try {
        expected = decodeURIComponent(s);
      } catch {
        expected = null;
      }
      expect(isDecodable(s), s).toBe(expected !== null);
      expect(safeDecode(s), s).toBe(expected);
      if (expected !== null) valid++;
    }
    expect(valid).toBeGreaterThan(1000);
  });

  it('queryHas matches decoded names and values, any occurrence', () => {
    expect(queryHas('a=1&b=2', 'b', '2')).toBe(true);
    expect(queryHas('b=1&b=2', 'b', '2')).toBe(true);
    expect(queryHas('b', 'b', '')).toBe(true);
    expect(queryHas('b=', 'b', '')).toBe(true);
    expect(queryHas('&&b=x%20y&&', 'b', 'x y')).toBe(true);
    expect(queryHas('b=x+y', 'b', 'x y')).toBe(false);
    expect(queryHas('b=%E0%A4%A', 'b', '')).toBe(false);
    expect(queryHas('ab=1', 'b', '1')).toBe(false);
    expect(queryHas('', 'b', '')).toBe(false);
    expect(queryHas('b=1=2', 'b', '1=2')).toBe(true);
  });
});
