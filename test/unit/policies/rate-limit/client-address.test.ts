/**
 * The client address behind trusted proxies (workers/policies/rate-limit/keys.ts),
 * tested as a kind against references written here, for generated inputs:
 *
 *  - parseIPv4(s) is not -1 exactly when net.isIPv4(s), and then it is the
 *    address as a 32-bit number (four parts 0-255, no leading zeros);
 *  - clientAddress(ctx, trustedProxyList(rules)) is what the straightforward
 *    reference gives (node:net BlockList for every check, xff.split(',')):
 *    README "Rate limits", Keys: when the connection comes from a trusted
 *    proxy, the client is the right-most X-Forwarded-For address that is
 *    not one; every hop trusted: the left-most; a hop that is not an
 *    address where the client should be: the peer itself;
 *  - the same through keyFunction, whose `ip` key caches the verdict on the
 *    last peer: over long sequences of requests from a few peers (trusted
 *    and not, one context object reused as the transport does), under two
 *    policies with different rule lists interleaved, every answer is the
 *    reference's for that request alone.
 *
 * Rule lists: IPv4 only (keys.ts checks those in JS), mixed with IPv6
 * (BlockList), /0 and /32 (/128) prefixes, networks given with host bits
 * set, IPv4-mapped IPv6 ranges, invalid entries (skipped, as validation
 * refused them). Hops: addresses inside and outside the rules, ports,
 * IPv6 in brackets with and without ports, IPv4-mapped IPv6, empty hops,
 * spaces and tabs, garbage, all-trusted chains.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { clientAddress, keyFunction, keyKind, K_IP, K_HEADER, parseIPv4, trustedProxyList } from '../../../../workers/policies/rate-limit/keys.js';
import { RequestContext } from '../../../../workers/pipeline/context.js';
import type { RateLimitPolicy } from '../../../../common/config/types.js';
import { Rng } from './harness.js';

// ---------------------------------------------------------------------------
// references

/** An IPv4 address as a number, by its definition: 4 decimal parts, each one byte. */
function ipv4Value(s: string): number {
  return s.split('.').reduce((v, p) => v * 256 + Number(p), 0);
}

/** A BlockList of the rules that are an address or address/prefix; others skipped. */
function refList(rules: readonly string[]): net.BlockList | null {
  if (rules.length === 0) return null;
  const list = new net.BlockList();
  for (const r of rules) {
    const [addr, prefix] = r.split('/') as [string, string | undefined];
    const v = net.isIP(addr);
    if (v === 0) continue;
    const max = v === 4 ? 32 : 128;
    if (prefix !== undefined && !(/^[0-9]{1,3}$/.test(prefix) && Number(prefix) <= max)) continue;
    list.addSubnet(addr, prefix === undefined ? max : Number(prefix), v === 4 ? 'ipv4' : 'ipv6');
  }
  return list;
}

function refTrusted(list: net.BlockList, addr: string): boolean {
  const v = net.isIP(addr);
  return v !== 0 && list.check(addr, v === 4 ? 'ipv4' : 'ipv6');
}

/** `a:port` (one colon) -> `a`; `[v6]...` -> `v6`; anything else as is. */
function refStripPort(s: string): string {
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    return end === -1 ? s : s.slice(1, end);
  }
  const parts = s.split(':');
  return parts.length === 2 ? parts[0]! : s;
}

/**
 * One spelling per address, by the RFCs: an IPv6 address as its 8 groups,
 * then written as RFC 5952 4 says (lowercase, no leading zeros, the longest
 * run of two or more zero groups as `::`, the first of equal runs); in
 * ::ffff:0:0/96 (IPv4-mapped, RFC 4291 2.5.5.2) as the IPv4 address.
 * Addresses with a zone id, and IPv4 ones, as they are.
 */
function refCanonical(a: string): string {
  if (net.isIP(a) !== 6 || a.includes('%')) return a;
  let s = a.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (v4 !== null) {
    const [b0, b1, b2, b3] = v4.slice(1).map(Number) as [number, number, number, number];
    s = s.slice(0, v4.index) + ((b0 << 8) | b1).toString(16) + ':' + ((b2 << 8) | b3).toString(16);
  }
  const [left, right] = s.includes('::') ? s.split('::') as [string, string] : [s, null];
  const l = left === '' ? [] : left.split(':');
  const r = right === null || right === '' ? [] : right.split(':');
  const groups = right === null ? l : [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r];
  const g = groups.map((x) => parseInt(x, 16));
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return `${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best === -1) return hex.join(':');
  return hex.slice(0, best).join(':') + '::' + hex.slice(best + bestLen).join(':');
}

function refClientAddress(peer: string, xff: string | null, list: net.BlockList | null): string {
  if (list === null || xff === null || !refTrusted(list, peer)) return peer;
  const hops = xff.split(',').map((h) => refStripPort(h.trim()));
  for (let i = hops.length - 1; i >= 0; i--) {
    if (hops[i] === '') continue;
    if (!refTrusted(list, hops[i]!)) return net.isIP(hops[i]!) === 0 ? peer : refCanonical(hops[i]!);
  }
  return net.isIP(hops[0]!) === 0 ? peer : refCanonical(hops[0]!);
}

// ---------------------------------------------------------------------------
// generators

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(xs.length)]!;
const BYTE_EDGES = [0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 254, 255];

function byte(rng: Rng): number {
  return rng.int(3) === 0 ? pick(rng, BYTE_EDGES) : rng.int(256);
}

function quad(rng: Rng): string {
  return `${byte(rng)}.${byte(rng)}.${byte(rng)}.${byte(rng)}`;
}

function v4FromNumber(a: number): string {
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

function hex16(rng: Rng): string {
  return rng.int(256 * 256).toString(16);
}

/** IPv6 addresses in the spellings a proxy may write: upper case, leading zeros, zero runs uncompressed. */
function ipv6(rng: Rng): string {
  const a = ipv6Form(rng);
  switch (rng.int(4)) {
    case 0: return a.toUpperCase();
    case 1: return a.replace(/(^|:)([0-9a-f]{1,3})(?=:|$)/g, (_m, p: string, g: string) => p + g.padStart(4, '0'));
    case 2: return a === '::' ? '0:0:0:0:0:0:0:0' : a.replace('::', ':0:0:').replace(/^:/, '0:').replace(/:$/, ':0');
    default: return a;
  }
}

function ipv6Form(rng: Rng): string {
  switch (rng.int(8)) {
    case 0: return '::1';
    case 1: return '::';
    case 2: return `::ffff:${quad(rng)}`; // IPv4-mapped
    case 3: return `::ffff:${hex16(rng)}:${hex16(rng)}`; // IPv4-mapped, hex form
    case 4: return `fd00::${hex16(rng)}`;
    case 5: return `2001:db8:${hex16(rng)}::${hex16(rng)}`;
    case 6: return `fe80::${hex16(rng)}%eth0`;
    default: return Array.from({ length: 8 }, () => hex16(rng)).join(':');
  }
}

/** Strings that are, or are close to, dotted quads. */
function nearQuad(rng: Rng): string {
  const parts = [byte(rng), byte(rng), byte(rng), byte(rng)].map(String);
  switch (rng.int(16)) {
    case 0: parts[rng.int(4)] = '0' + parts[rng.int(4)]; break; // leading zero
    case 1: parts[rng.int(4)] = String(256 + rng.int(800)); break; // over 255
    case 2: parts[rng.int(4)] = ''; break; // empty part
    case 3: parts.push(String(byte(rng))); break; // 5 parts
    case 4: parts.pop(); break; // 3 parts
    case 5: return ` ${parts.join('.')}`;
    case 6: return `${parts.join('.')} `;
    case 7: parts[rng.int(4)] = `${parts[0]} `; break;
    case 8: parts[rng.int(4)] = pick(rng, ['+1', '-1', '0x1', '1e2', 'a', '１', '٣', '1_0', '00', '000', '0255']); break;
    case 9: return parts.join('.') + '.';
    case 10: return '.' + parts.join('.');
    case 11: return parts.join(pick(rng, [',', ':', '..', '/']));
    case 12: return parts.join('.') + pick(rng, [':80', '/32', '%eth0', '\n', '\0']);
  }
  return parts.join('.');
}

function randomString(rng: Rng): string {
  const alphabet = '0123456789.....:: ab,f[]%-+x\t';
  let s = '';
  for (let n = rng.int(18); n > 0; n--) s += alphabet[rng.int(alphabet.length)];
  return s;
}

function anyString(rng: Rng): string {
  switch (rng.int(5)) {
    case 0: return quad(rng);
    case 1: return ipv6(rng);
    case 2: return randomString(rng);
    default: return nearQuad(rng);
  }
}

interface Rules {
  text: string[];
  /** IPv4 networks (number, prefix) to draw addresses inside them from. */
  v4: [number, number][];
  v6: string[];
}

const V6_RULES = ['::1', '::1/128', 'fd00::/8', '2001:db8::/32', '::ffff:10.0.0.0/104', '::ffff:0:0/96', 'fe80::/10', '::/0'];

function rules(rng: Rng, allV4: boolean): Rules {
  const out: Rules = { text: [], v4: [], v6: [] };
  const n = 1 + rng.int(4);
  for (let i = 0; i < n; i++) {
    if (!allV4 && rng.int(3) === 0) {
      const r = pick(rng, V6_RULES);
      out.text.push(r);
      out.v6.push(r);
      continue;
    }
    if (rng.int(12) === 0) {
      out.text.push(pick(rng, ['not-an-ip', '10.0.0.0/33', '1.2.3.4/', '01.2.3.4', '10.0.0.0/x']));
      continue;
    }
    const prefix = pick(rng, [0, 1, 7, 8, 12, 16, 23, 24, 30, 31, 32, 32, 32, rng.int(33)]);
    const addr = quad(rng); // host bits set or not
    out.text.push(rng.int(5) === 0 && prefix === 32 ? addr : `${addr}/${prefix}`);
    out.v4.push([ipv4Value(addr), prefix]);
  }
  return out;
}

/** An address near the rules (inside a rule's network, or just outside it), or any. */
function address(rng: Rng, r: Rules): string {
  const k = rng.int(10);
  if (k < 5 && r.v4.length > 0) {
    const [net4, prefix] = pick(rng, r.v4);
    const mask = prefix === 0 ? 0 : (-1 << (32 - prefix)) >>> 0;
    let a = ((net4 & mask) | (Math.floor(rng.next() * 2 ** 32) & ~mask)) >>> 0;
    if (rng.int(4) === 0 && prefix > 0) a = (a ^ (2 ** (32 - prefix))) >>> 0; // the neighbouring network
    const s = v4FromNumber(a);
    return rng.int(6) === 0 ? `::ffff:${s}` : s;
  }
  if (k < 7 && r.v6.length > 0) {
    const rule = pick(rng, r.v6);
    if (rule.startsWith('::ffff:10.')) return `::ffff:10.${byte(rng)}.${byte(rng)}.${byte(rng)}`;
    if (rule.startsWith('fd00')) return `fd${rng.int(256).toString(16).padStart(2, '0')}::${hex16(rng)}`;
    if (rule.startsWith('2001')) return `2001:db8:${hex16(rng)}::1`;
    return pick(rng, ['::1', '::2', 'fe80::1', `::ffff:${quad(rng)}`]);
  }
  return k === 9 ? anyString(rng) : pick(rng, [quad(rng), ipv6(rng), '127.0.0.1']);
}

/** One X-Forwarded-For hop as a client or proxy might write it. */
function hop(rng: Rng, r: Rules): string {
  const a = address(rng, r);
  const sp = () => pick(rng, ['', '', '', ' ', '  ', '\t']);
  let h = a;
  switch (rng.int(12)) {
    case 0: h = a.includes(':') ? `[${a}]:${rng.int(65536)}` : `${a}:${rng.int(65536)}`; break;
    case 1: h = `[${a}]`; break;
    case 2: h = ''; break;
    case 3: h = pick(rng, ['unknown', '_hidden', 'garbage', '[', '[::1', ']', ':', ':80', '1.2.3.4:', 'a:b', '"1.2.3.4"', 'for=1.2.3.4']); break;
    case 4: h = nearQuad(rng); break;
  }
  return sp() + h + sp();
}

function xffOf(rng: Rng, r: Rules): string | null {
  if (rng.int(15) === 0) return null;
  if (rng.int(20) === 0) return pick(rng, ['', ' ', ',', ', ,', ',,,']);
  const n = 1 + rng.int(6);
  const hops: string[] = [];
  if (rng.int(5) === 0 && r.v4.length > 0) {
    // a chain of trusted proxies only (or nearly)
    for (let i = 0; i < n; i++) {
      const [net4, prefix] = pick(rng, r.v4);
      const mask = prefix === 0 ? 0 : (-1 << (32 - prefix)) >>> 0;
      hops.push(v4FromNumber(((net4 & mask) | (Math.floor(rng.next() * 2 ** 32) & ~mask)) >>> 0));
    }
  } else {
    for (let i = 0; i < n; i++) hops.push(hop(rng, r));
  }
  return hops.join(pick(rng, [',', ', ', ' , ', ',\t']));
}

function policy(by: 'ip' | 'header', keyName: string | null = null): RateLimitPolicy {
  return { by, keyName } as RateLimitPolicy;
}

// ---------------------------------------------------------------------------

describe('parseIPv4', () => {
  it('accepts exactly what net.isIPv4 accepts, with the address as its value (generated strings)', () => {
    const rng = new Rng(0x1b4);
    let valid = 0;
    for (let i = 0; i < 200_000; i++) {
      const s = anyString(rng);
      const got = parseIPv4(s);
      if ((got !== -1) !== net.isIPv4(s)) expect.fail(`parseIPv4(${JSON.stringify(s)}) = ${got}, net.isIPv4 ${net.isIPv4(s)}`);
      if (got !== -1) {
        valid++;
        if (got !== ipv4Value(s)) expect.fail(`parseIPv4(${JSON.stringify(s)}) = ${got}, not ${ipv4Value(s)}`);
      }
    }
    expect(valid).toBeGreaterThan(50_000); // both sides well covered
  });

  it('agrees with net.isIPv4 on every string of 7 or 8 characters over "0125."', () => {
    const alphabet = '0125.';
    let checked = 0;
    for (const len of [7, 8]) {
      const idx = new Array<number>(len).fill(0);
      for (;;) {
        let s = '';
        for (let i = 0; i < len; i++) s += alphabet[idx[i]!];
        const got = parseIPv4(s);
        if ((got !== -1) !== net.isIPv4(s) || (got !== -1 && got !== ipv4Value(s))) expect.fail(`parseIPv4(${JSON.stringify(s)}) = ${got}`);
        checked++;
        let k = len - 1;
        while (k >= 0 && ++idx[k]! === alphabet.length) idx[k--] = 0;
        if (k < 0) break;
      }
    }
    expect(checked).toBe(5 ** 7 + 5 ** 8);
  });

  it('every value of every part, with and without leading zeros, in every position', () => {
    for (let pos = 0; pos < 4; pos++) {
      for (let v = 0; v < 1000; v++) {
        for (const text of [String(v), '0' + v, '00' + v]) {
          const parts = ['1', '2', '3', '4'];
          parts[pos] = text;
          const s = parts.join('.');
          const got = parseIPv4(s);
          if ((got !== -1) !== net.isIPv4(s) || (got !== -1 && got !== ipv4Value(s))) expect.fail(`parseIPv4(${JSON.stringify(s)}) = ${got}`);
        }
      }
    }
    expect(parseIPv4('255.255.255.255')).toBe(2 ** 32 - 1);
    expect(parseIPv4('0.0.0.0')).toBe(0);
    expect(parseIPv4('128.0.0.1')).toBe(2 ** 31 + 1);
    for (const s of ['', '1.2.3', '1.2.3.4.5', '1..2.3', '256.0.0.0', '01.2.3.4', ' 1.2.3.4', '1.2.3.4 ', '::1', '::ffff:1.2.3.4', '1.2.3.4:80']) {
      expect(parseIPv4(s)).toBe(-1);
    }
  });
});

describe('clientAddress behind trusted proxies', () => {
  it('is the reference (BlockList, split) for generated rule lists, peers and X-Forwarded-For, on a first call', () => {
    const rng = new Rng(0xadd7);
    const ctx = new RequestContext();
    let behind = 0;
    for (let i = 0; i < 4000; i++) {
      const r = rules(rng, rng.int(2) === 0);
      const list = trustedProxyList(r.text);
      const ref = refList(r.text);
      for (let j = 0; j < 10; j++) {
        ctx.clientIp = address(rng, r);
        ctx.xff = xffOf(rng, r);
        const want = refClientAddress(ctx.clientIp, ctx.xff, ref);
        const got = clientAddress(ctx, list);
        if (got !== want) {
          expect.fail(`rules ${JSON.stringify(r.text)}, peer ${JSON.stringify(ctx.clientIp)}, X-Forwarded-For ${JSON.stringify(ctx.xff)}: ${JSON.stringify(got)}, reference ${JSON.stringify(want)}`);
        }
        if (want !== ctx.clientIp) behind++;
      }
    }
    expect(behind).toBeGreaterThan(8000); // the client was found behind proxies often
  });

  it('is the reference through keyFunction over request sequences from a few peers (the cached peer verdict never leaks)', () => {
    const rng = new Rng(0xcac4e);
    const ctx = new RequestContext();
    let trustedPeers = 0;
    let untrustedPeers = 0;
    for (let i = 0; i < 600; i++) {
      // Two policies with different rule lists, used in turn: each keeps its own cache.
      const ra = rules(rng, rng.int(2) === 0);
      const rb = rules(rng, rng.int(2) === 0);
      const sides = [ra, rb].map((r) => {
        const list = trustedProxyList(r.text);
        const peers = Array.from({ length: 2 + rng.int(3) }, () => address(rng, r));
        if (r.v4.length > 0) peers.push(v4FromNumber(r.v4[0]![0])); // a peer of the first rule's network
        return {
          r,
          ref: refList(r.text),
          peers,
          ip: keyFunction(policy('ip'), list),
          header: keyFunction(policy('header', 'x-client'), list),
        };
      });
      for (const s of sides) {
        for (const p of s.peers) {
          if (s.ref !== null && refTrusted(s.ref, p)) trustedPeers++;
          else untrustedPeers++;
        }
      }
      for (let j = 0; j < 60; j++) {
        const s = pick(rng, sides);
        // Runs of one peer, then switches: the verdict of one peer must not answer for the next.
        ctx.clientIp = rng.int(3) === 0 ? pick(rng, s.peers) : s.peers[j % s.peers.length]!;
        ctx.xff = xffOf(rng, s.r);
        const want = refClientAddress(ctx.clientIp, ctx.xff, s.ref);
        const useHeader = rng.int(4) === 0;
        const client = useHeader && rng.int(2) === 0 ? 'tenant-7' : null;
        ctx.headers = client === null ? [] : ['x-client', client];
        keyKind.kind = 0;
        const got = (useHeader ? s.header : s.ip)(ctx);
        const expected = client ?? want;
        if (got !== expected) {
          expect.fail(`request ${j}, rules ${JSON.stringify(s.r.text)}, peer ${JSON.stringify(ctx.clientIp)}, X-Forwarded-For ${JSON.stringify(ctx.xff)}: ${JSON.stringify(got)}, reference ${JSON.stringify(expected)}`);
        }
        expect(keyKind.kind).toBe(client === null ? K_IP : K_HEADER);
      }
    }
    expect(trustedPeers).toBeGreaterThan(500);
    expect(untrustedPeers).toBeGreaterThan(500);
  });

  it('same peer text, alternating trusted and untrusted peers, alternating policies (hand-picked sequence)', () => {
    const a = trustedProxyList(['10.0.0.0/8']);
    const b = trustedProxyList(['192.168.0.0/16', 'fd00::/8']);
    const ka = keyFunction(policy('ip'), a);
    const kb = keyFunction(policy('ip'), b);
    const ctx = new RequestContext();
    const seq: [typeof ka, string, string | null, string][] = [
      [ka, '10.0.0.1', '203.0.113.9', '203.0.113.9'],
      [ka, '11.0.0.1', '203.0.113.9', '11.0.0.1'], // untrusted peer right after a trusted one
      [ka, '10.0.0.1', '203.0.113.9, 10.9.9.9', '203.0.113.9'],
      [kb, '10.0.0.1', '203.0.113.9', '10.0.0.1'], // the other policy: 10/8 is not trusted there
      [ka, '10.0.0.1', '203.0.113.7', '203.0.113.7'],
      [kb, 'fd00::5', '203.0.113.1, 192.168.3.3', '203.0.113.1'],
      [kb, 'fd00::5', null, 'fd00::5'],
      [kb, '::ffff:192.168.1.1', '[2001:db8::1]:443', '2001:db8::1'], // mapped peer, trusted through the IPv4 rule
      [kb, '192.168.1.1', 'garbage', '192.168.1.1'],
      [ka, '10.0.0.1', '', '10.0.0.1'],
      [ka, '10.0.0.1', '10.1.1.1, 10.2.2.2', '10.1.1.1'], // every hop trusted: the left-most
    ];
    for (const [k, peer, xff, want] of seq) {
      ctx.clientIp = peer;
      ctx.xff = xff;
      expect(k(ctx), `${peer} / ${xff}`).toBe(want);
    }
  });
});
