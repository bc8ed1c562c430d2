import { describe, expect, it } from 'vitest';
import { formatAddress } from '../../../workers/transport/uws-server.js';

const v6 = (s: string) => {
  // expand for test input only
  const [head, tail] = s.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t].map((x) => parseInt(x, 16));
  const b = new Uint8Array(16);
  groups.forEach((g, i) => { b[2 * i] = g >> 8; b[2 * i + 1] = g & 0xff; });
  return b;
};

describe('formatAddress (uWS binary remote address -> text)', () => {
  it('formats IPv4, and IPv4-mapped IPv6 as plain IPv4', () => {
    expect(formatAddress(new Uint8Array([127, 0, 0, 1]))).toBe('127.0.0.1');
    expect(formatAddress(new Uint8Array([10, 200, 3, 255]))).toBe('10.200.3.255');
    expect(formatAddress(v6('::ffff:c0a8:0101'))).toBe('192.168.1.1');
    // cached path returns the same text
    expect(formatAddress(new Uint8Array([127, 0, 0, 1]))).toBe('127.0.0.1');
  });
  it('formats IPv6 per RFC 5952 (longest zero run compressed, lowercase)', () => {
    expect(formatAddress(v6('::1'))).toBe('::1');
    expect(formatAddress(v6('2001:db8::1'))).toBe('2001:db8::1');
    expect(formatAddress(v6('2001:db8:0:0:1:0:0:1'))).toBe('2001:db8::1:0:0:1');
    expect(formatAddress(v6('fe80::abcd:ef01:2345:6789'))).toBe('fe80::abcd:ef01:2345:6789');
    expect(formatAddress(v6('1:2:3:4:5:6:7:8'))).toBe('1:2:3:4:5:6:7:8');
    expect(formatAddress(v6('1:0:3:4:5:6:7:8'))).toBe('1:0:3:4:5:6:7:8');
  });
  it('returns empty text for an unknown length', () => {
    expect(formatAddress(new Uint8Array(3))).toBe('');
  });
});
