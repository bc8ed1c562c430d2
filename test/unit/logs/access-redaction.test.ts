/**
 * Access log redaction (log.access.redactQuery), generated: every name of
 * the default list × every way a client can write that name (percent
 * escapes, case, form encoding, PHP/Rails array brackets, separators,
 * position) × both formats (JSON and combined), in the query, the path's
 * matrix parameters and (combined) the Referer. The secret value must never
 * reach the line; the parameters around it must be kept as sent.
 *
 * The operator break-it pass found `%54oken=`, `token[]=`, `token[x]=`,
 * `+token=`, `;` as a separator, `TOKEN=` and a Referer carrying
 * `?token=` leaking: each is a row here.
 */
import { describe, expect, it } from 'vitest';
import { createAccessRing, RingReader } from '../../../common/access-ring.js';
import { ACCESS_LOG_FIELDS, DEFAULTS } from '../../../common/config/schema.js';
import type { AccessLogConfig } from '../../../common/config/types.js';
import {
  AccessLog, REDACTED_VALUE, SecretParams, canonicalParamName, entry, redactPath, redactQuery, redactUrl, resetEntry,
} from '../../../workers/access-log.js';

const DEFAULT_LIST = DEFAULTS.log.access.redactQuery;
const secrets = new SecretParams(DEFAULT_LIST);

/** Names the default list must hide: its plain entries, and examples of what its `*` entries cover. */
const GLOB_EXAMPLES: Record<string, string[]> = {
  '*_token': ['csrf_token', 'x-auth-token', 'github_token', 'accessToken'],
  '*secret*': ['app_secret', 'secret_key', 'clientSecret'],
  '*password*': ['user_password', 'password_confirmation', 'newPassword'],
  '*passwd*': ['db_passwd', 'passwd2'],
  '*api_key': ['x-api-key', 'google_api_key', 'apiKey'],
  '*signature': ['oauth_signature', 'x-goog-signature'],
  '*session_id': ['aspsessionid', 'jsessionid'],
};
const NAMES: string[] = DEFAULT_LIST.flatMap((n) => (n.includes('*') ? GLOB_EXAMPLES[n] ?? [] : [n]));

function hex(c: string, lower = false): string {
  const h = c.charCodeAt(0).toString(16).padStart(2, '0');
  return '%' + (lower ? h.toLowerCase() : h.toUpperCase());
}

/** Ways to write a parameter name (only what a client can put in a request target: no raw space). */
const ENCODINGS: Array<[string, (n: string) => string]> = [
  ['as is', (n) => n],
  ['upper case', (n) => n.toUpperCase()],
  ['mixed case', (n) => [...n].map((c, i) => (i % 2 === 0 ? c.toUpperCase() : c)).join('')],
  ['first char %HH', (n) => hex(n[0]!) + n.slice(1)],
  ['first char %hh', (n) => hex(n[0]!, true) + n.slice(1)],
  ['last char %HH', (n) => n.slice(0, -1) + hex(n[n.length - 1]!)],
  ['every char %HH', (n) => [...n].map((c) => hex(c)).join('')],
  ['double-encoded first char', (n) => '%25' + hex(n[0]!).slice(1) + n.slice(1)],
  ['+ before (form-encoded space)', (n) => '+' + n],
  ['+ after', (n) => n + '+'],
  ['%20 before', (n) => '%20' + n],
  ['%09 after', (n) => n + '%09'],
  ['[] (array)', (n) => n + '[]'],
  ['[x] (hash)', (n) => n + '[x]'],
  ['[a][b] (nested)', (n) => n + '[a][b]'],
  ['%5B%5D', (n) => n + '%5B%5D'],
  ['%5Bx%5D, upper case', (n) => n.toUpperCase() + '%5Bx%5D'],
  ['- and _ swapped', (n) => n.replace(/[-_]/g, (c) => (c === '-' ? '_' : '-'))],
  ['_ as . (PHP mangling)', (n) => n.replace(/_/g, '.')],
  ['separators dropped', (n) => n.replace(/[-_]/g, '')],
];

/** Where the pair goes in the query, and how it is separated from its neighbours. */
const LAYOUTS: Array<[string, (pair: string) => string]> = [
  ['alone', (p) => p],
  ['first, &', (p) => `${p}&keep=1`],
  ['middle, &', (p) => `a=1&${p}&keep=1`],
  ['last, &', (p) => `a=1&${p}`],
  ['middle, ;', (p) => `a=1;${p};keep=1`],
  ['last, ;', (p) => `a=1;${p}`],
  ['mixed & and ;', (p) => `a=1&b=2;${p}&keep=1`],
  ['after a valueless flag', (p) => `flag&${p}`],
  ['nested unencoded in another value', (p) => `next=/cb?${p}`],
  ['nested percent-encoded in another value', (p) => `a=1&next=${encodeURIComponent(`/cb?x=1&${p}`)}&keep=1`],
  ['nested encoded twice', (p) => `next=${encodeURIComponent(encodeURIComponent(`https://idp.example/cb?${p}`))}&keep=1`],
  ['nested encoded, ; separated', (p) => `a=1;next=${encodeURIComponent(`/cb;${p}`)}`],
];

interface Case { name: string; encoding: string; layout: string; query: string; secret: string }

function cases(): Case[] {
  const out: Case[] = [];
  let i = 0;
  for (const name of NAMES) {
    for (const [encoding, enc] of ENCODINGS) {
      for (const [layout, lay] of LAYOUTS) {
        const secret = `S3CRET${(i++).toString(36)}zq`;
        out.push({ name, encoding, layout, query: lay(`${enc(name)}=${secret}`), secret });
      }
    }
  }
  return out;
}
const CASES = cases();

function config(format: 'json' | 'combined'): AccessLogConfig {
  return {
    enabled: true, destination: 'stdout', format, sampleRate: 1, fields: [...ACCESS_LOG_FIELDS],
    redactQuery: DEFAULT_LIST.map((n) => n.toLowerCase()),
  };
}

/** An AccessLog writing into a ring of its own, and a way to read its lines back. */
function logger(format: 'json' | 'combined') {
  const ring = createAccessRing(1 << 20);
  const log = new AccessLog(config(format), ring);
  const reader = new RingReader(ring);
  return {
    line(fill: () => void): string {
      resetEntry();
      const e = entry;
      e.t0 = performance.now();
      e.requestId = 'rid-1';
      e.client = '127.0.0.1';
      e.method = 'GET';
      e.host = 'gw.test';
      e.path = '/p';
      e.query = '';
      e.status = 200;
      e.userAgent = 'UA';
      e.referer = '';
      fill();
      log.write();
      const span = reader.next()!;
      const text = reader.buf.subarray(span[0], span[1]).toString('utf8');
      reader.release(span[1]);
      return text;
    },
  };
}

describe('canonicalParamName', () => {
  it('compares names after +, percent-decoding, case folding, brackets and separators', () => {
    for (const raw of ['token', 'TOKEN', '%54oken', '%74%6F%6B%65%6E', '%2574oken', '+token', 'token+', '%20token', 'token[]', 'token[x]', 'token[a][b]', 'token%5B%5D', 'to-ken', 'to.ken', 'to_ken', ' token\t']) {
      expect(canonicalParamName(raw), raw).toBe('token');
    }
    expect(canonicalParamName('[token]')).toBe('[token]'); // a leading bracket is not an array suffix
    expect(canonicalParamName('%zztoken')).toBe('%zztoken'); // a bad escape stays as sent
  });

  it('does not hide an encoded value that nests no secret', () => {
    for (const q of ['next=%2Fcb%3Fpage%3D2', 'next=%252Fcb%253Fsort%253Dasc', 'q=a%3Db', 'x=%zz%3D']) expect(redactQuery(q, secrets)).toBe(q);
  });

  it('does not hide ordinary parameters', () => {
    for (const name of ['a', 'page', 'q', 'sort', 'keyboard', 'monkey', 'tokenize', 'codec', 'signed', 'authority', 'state', 'page_size', 'id']) {
      expect(secrets.matches(name), name).toBe(false);
      expect(redactQuery(`${name}=visible`, secrets)).toBe(`${name}=visible`);
    }
  });
});

describe(`redactQuery: ${NAMES.length} names × ${ENCODINGS.length} encodings × ${LAYOUTS.length} layouts`, () => {
  it('never lets the value through, keeps what is around it', () => {
    const leaks: string[] = [];
    for (const c of CASES) {
      const out = redactQuery(c.query, secrets);
      if (out.includes(c.secret) || !out.includes(REDACTED_VALUE)) leaks.push(`${c.name} / ${c.encoding} / ${c.layout}: ${c.query} -> ${out}`);
      else if (c.query.includes('keep=1') && !out.includes('keep=1')) leaks.push(`${c.name} / ${c.encoding} / ${c.layout}: lost keep=1: ${out}`);
      else if (c.query.startsWith('a=1') && !out.startsWith('a=1')) leaks.push(`${c.name} / ${c.encoding} / ${c.layout}: lost a=1: ${out}`);
    }
    expect(leaks.slice(0, 20), `${leaks.length} of ${CASES.length} cases leak`).toEqual([]);
  });

  it('keeps the name as sent and the query byte for byte when nothing is secret', () => {
    expect(redactQuery('%54oken=abc&x=1', secrets)).toBe(`%54oken=${REDACTED_VALUE}&x=1`);
    expect(redactQuery('token[]=a&token[]=b', secrets)).toBe(`token[]=${REDACTED_VALUE}&token[]=${REDACTED_VALUE}`);
    expect(redactQuery('x=1;TOKEN=abc=def;y', secrets)).toBe(`x=1;TOKEN=${REDACTED_VALUE};y`);
    const plain = 'a=1&b=%20two&c&d=;e=x=y';
    expect(redactQuery(plain, secrets)).toBe(plain);
  });

  it('is linear in the query length (a long query without "=" is no attack)', () => {
    const q = 'a&'.repeat(50_000);
    const t = performance.now();
    redactQuery(q, secrets);
    expect(performance.now() - t).toBeLessThan(500);
  });

  it('an empty list redacts nothing; a configured list replaces the default', () => {
    expect(redactQuery('token=a', new SecretParams([]))).toBe('token=a');
    const mine = new SecretParams(['X-My-Secret-Param']);
    expect(redactQuery('x_my_secret_param=a&token=b', mine)).toBe(`x_my_secret_param=${REDACTED_VALUE}&token=b`);
  });
});

describe('redactPath and redactUrl', () => {
  it('hides secret matrix parameters of the path', () => {
    expect(redactPath('/app;jsessionid=ABC123/x;v=1;TOKEN=t/y', secrets)).toBe(`/app;jsessionid=${REDACTED_VALUE}/x;v=1;TOKEN=${REDACTED_VALUE}/y`);
    expect(redactPath('/plain/path', secrets)).toBe('/plain/path');
  });

  it('hides credentials, and secret parameters of the query and fragment', () => {
    expect(redactUrl('https://user:pw@ref.test/a?x=1&token=t#access_token=f&state=s', secrets))
      .toBe(`https://${REDACTED_VALUE}@ref.test/a?x=1&token=${REDACTED_VALUE}#access_token=${REDACTED_VALUE}&state=s`);
    expect(redactUrl('https://ref.test/cb#/route?id_token=x', secrets)).toBe(`https://ref.test/cb#/route?id_token=${REDACTED_VALUE}`);
    expect(redactUrl('https://ref.test/a@b?x=1', secrets)).toBe('https://ref.test/a@b?x=1'); // @ in the path: no credentials
  });
});

for (const format of ['json', 'combined'] as const) {
  describe(`access log lines (${format}): every case in the query, the path and the Referer`, () => {
    it('no secret reaches a line', () => {
      const log = logger(format);
      const leaks: string[] = [];
      for (const c of CASES) {
        const where: Array<[string, () => void]> = [
          ['query', () => { entry.query = c.query; }],
          ['path', () => { entry.path = `/app;${c.query.replace(/[&?]/g, ';')}/x`; }],
        ];
        if (format === 'combined') where.push(['referer', () => { entry.referer = `https://ref.test/page?${c.query}`; }]);
        for (const [at, fill] of where) {
          const line = log.line(fill);
          if (line.includes(c.secret) || !line.includes(REDACTED_VALUE)) leaks.push(`${at}: ${c.name} / ${c.encoding} / ${c.layout}: ${line.trim()}`);
          if (format === 'json') JSON.parse(line);
        }
      }
      expect(leaks.slice(0, 20), `${leaks.length} leaks`).toEqual([]);
    });
  });
}

describe('combined format', () => {
  it('Referer credentials and fragment tokens are hidden; the line keeps its shape', () => {
    const log = logger('combined');
    const line = log.line(() => {
      entry.query = 'a=1&token=qs';
      entry.referer = 'https://u:refpw@ref.test/p?code=oauthcode&x=2#access_token=frag';
    });
    for (const s of ['qs', 'refpw', 'oauthcode', 'frag']) expect(line).not.toContain(s);
    expect(line).toMatch(/^127\.0\.0\.1 - - \[[^\]]+\] "GET \/p\?a=1&token=\[REDACTED\] HTTP\/1\.1" 200 0 "https:\/\/\[REDACTED\]@ref\.test\/p\?code=\[REDACTED\]&x=2#access_token=\[REDACTED\]" "UA"\n$/);
  });
});
