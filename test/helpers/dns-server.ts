/**
 * A tiny authoritative DNS server on UDP (node:dgram) for tests: answers
 * A and AAAA questions (RFC 1035 4.1, RFC 3596) from a map the test changes
 * while it runs. Hand-written because no DNS server package is installed
 * (dns-packet or dns2 from npm would do the encoding; ~100 lines here keep
 * the test free of a dependency).
 *
 *  - a name in the map: its addresses of the asked type (none: NODATA,
 *    i.e. NOERROR with an empty answer), with the map entry's TTL;
 *  - a name not in the map: NXDOMAIN;
 *  - `mode = 'servfail'`: SERVFAIL to everything; `mode = 'silent'`: no
 *    answer at all (a resolver times out); `stop()`: the port is closed.
 * Other question types: NOTIMP. Only the first question is answered.
 */
import dgram from 'node:dgram';
import { isIP } from 'node:net';

export interface DnsRecord {
  a?: string[];
  aaaa?: string[];
  /** Seconds. Default 1. */
  ttl?: number;
}

export interface TestDnsServer {
  port: number;
  /** `127.0.0.1:<port>`, for `dns.resolvers`. */
  address: string;
  /** Name (lowercase, no final dot) -> records. Change it at any time. */
  records: Map<string, DnsRecord>;
  mode: 'answer' | 'servfail' | 'silent';
  /** Questions received, by `name type`. */
  queries: string[];
  /** When each question of `queries` arrived (Date.now()). */
  times: number[];
  stop(): Promise<void>;
  /** Listens again on the same port after stop(). */
  restart(): Promise<void>;
}

const TYPE_A = 1;
const TYPE_AAAA = 28;

/** The 16 bytes of an IPv6 address (RFC 4291 2.2 text forms, "::" and an embedded IPv4 included). */
function ipv6Bytes(text: string): Buffer {
  if (isIP(text) !== 6) throw new Error(`not an IPv6 address: ${text}`);
  let s = text;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4 !== null) {
    const p = v4[1]!.split('.').map(Number);
    s = s.slice(0, -v4[1]!.length) + ((p[0]! << 8) | p[1]!).toString(16) + ':' + ((p[2]! << 8) | p[3]!).toString(16);
  }
  const [head, tail] = s.includes('::') ? s.split('::') as [string, string] : [s, null];
  const h = head === '' ? [] : head.split(':');
  const t = tail === null || tail === '' ? [] : tail.split(':');
  const groups = tail === null ? h : [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Reads the question's name (no compression in questions from c-ares); returns the name and the offset after it. */
function readName(msg: Buffer, at: number): [string, number] {
  const labels: string[] = [];
  let i = at;
  for (;;) {
    const len = msg[i]!;
    if (len === 0) return [labels.join('.').toLowerCase(), i + 1];
    if (len > 63 || i + 1 + len > msg.length) throw new Error('bad name');
    labels.push(msg.subarray(i + 1, i + 1 + len).toString('latin1'));
    i += 1 + len;
  }
}

function answer(msg: Buffer, server: TestDnsServer): Buffer | null {
  if (msg.length < 12) return null;
  const id = msg.readUInt16BE(0);
  const qd = msg.readUInt16BE(4);
  if (qd < 1) return null;
  const [name, end] = readName(msg, 12);
  const qtype = msg.readUInt16BE(end);
  const question = msg.subarray(12, end + 4);
  server.times.push(Date.now());
  server.queries.push(`${name} ${qtype === TYPE_A ? 'A' : qtype === TYPE_AAAA ? 'AAAA' : qtype}`);
  const header = (rcode: number, ancount: number) => {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(id, 0);
    h.writeUInt16BE(0x8000 | 0x0400 | (msg.readUInt16BE(2) & 0x0100) | rcode, 2); // QR, AA, RD copied
    h.writeUInt16BE(1, 4);
    h.writeUInt16BE(ancount, 6);
    return h;
  };
  if (server.mode === 'servfail') return Buffer.concat([header(2, 0), question]);
  if (qtype !== TYPE_A && qtype !== TYPE_AAAA) return Buffer.concat([header(4, 0), question]);
  const rec = server.records.get(name);
  if (rec === undefined) return Buffer.concat([header(3, 0), question]);
  const addrs = (qtype === TYPE_A ? rec.a : rec.aaaa) ?? [];
  const answers = addrs.map((a) => {
    const rdata = qtype === TYPE_A ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a);
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0); // the question's name
    rr.writeUInt16BE(qtype, 2);
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(rec.ttl ?? 1, 6);
    rr.writeUInt16BE(rdata.length, 10);
    return Buffer.concat([rr, rdata]);
  });
  return Buffer.concat([header(0, answers.length), question, ...answers]);
}

/** Starts the server on 127.0.0.1 (an ephemeral UDP port unless `port` is given). */
export async function startDnsServer(records: Record<string, DnsRecord> = {}, port = 0): Promise<TestDnsServer> {
  let socket: dgram.Socket | null = null;
  const server: TestDnsServer = {
    port,
    address: '',
    records: new Map(Object.entries(records)),
    mode: 'answer',
    queries: [],
    times: [],
    async stop() {
      const s = socket;
      socket = null;
      if (s !== null) await new Promise<void>((r) => s.close(() => r()));
    },
    async restart() {
      await listen(server.port);
    },
  };
  const listen = (p: number) => new Promise<void>((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.on('message', (msg, rinfo) => {
      if (server.mode === 'silent') return;
      let out: Buffer | null = null;
      try {
        out = answer(msg, server);
      } catch {
        return; // not a query we understand: no answer
      }
      if (out !== null) s.send(out, rinfo.port, rinfo.address);
    });
    s.once('error', reject);
    s.bind(p, '127.0.0.1', () => {
      socket = s;
      server.port = s.address().port;
      server.address = `127.0.0.1:${server.port}`;
      resolve();
    });
  });
  await listen(port);
  return server;
}
