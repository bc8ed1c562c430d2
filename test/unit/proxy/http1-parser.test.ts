import { describe, expect, it } from 'vitest';
import {
  BODY_CHUNKED, BODY_CLOSE, BODY_LENGTH, BODY_NONE, ParseError, ResponseParser, type ResponseSink,
} from '../../../workers/proxy/http1-parser.js';

class Recorder implements ResponseSink {
  status = 0;
  reason = '';
  headers: string[] = [];
  kind = -1;
  length = -2;
  body = '';
  ended = 0;
  onResponseHead(status: number, reason: string, headers: string[], kind: number, length: number) {
    this.status = status; this.reason = reason; this.headers = headers; this.kind = kind; this.length = length;
  }
  onResponseData(buf: Buffer, s: number, e: number) { this.body += buf.toString('latin1', s, e); }
  onResponseEnd() { this.ended++; }
}

/** Feeds `text` split at every given size, through one reused buffer (like the shared read buffer). */
function run(text: string, split: number, head = false) {
  const p = new ResponseParser();
  const r = new Recorder();
  p.reset(r, head);
  const all = Buffer.from(text, 'latin1');
  const shared = Buffer.alloc(65536);
  let consumed = 0;
  for (let i = 0; i < all.length; i += split) {
    const n = Math.min(split, all.length - i);
    all.copy(shared, 0, i, i + n);
    consumed += p.execute(shared, 0, n);
    shared.fill(0xee, 0, n); // anything kept by reference would now be garbage
  }
  return { p, r, consumed, total: all.length };
}

const splits = [1, 2, 3, 7, 64, 100000];

describe('ResponseParser framing', () => {
  for (const split of splits) {
    it(`content-length body, split ${split}`, () => {
      const { r, consumed, total } = run('HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello world', split);
      expect(r.status).toBe(200);
      expect(r.reason).toBe('OK');
      expect(r.kind).toBe(BODY_LENGTH);
      expect(r.headers).toEqual(['Content-Length', '11', 'X-A', 'b']);
      expect(r.body).toBe('hello world');
      expect(r.ended).toBe(1);
      expect(consumed).toBe(total);
    });

    it(`chunked body with extensions and trailers, split ${split}`, () => {
      const { r, p } = run('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n', split);
      expect(r.kind).toBe(BODY_CHUNKED);
      expect(r.body).toBe('hello world');
      expect(r.ended).toBe(1);
      expect(p.done).toBe(true);
    });

    it(`interim 100 and 103 responses are skipped, split ${split}`, () => {
      const { r } = run('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok', split);
      expect(r.status).toBe(201);
      expect(r.body).toBe('ok');
    });
  }

  it('HEAD responses have no body whatever Content-Length says', () => {
    const { r, p } = run('HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n', 100, true);
    expect(r.kind).toBe(BODY_NONE);
    expect(r.length).toBe(500);
    expect(r.ended).toBe(1);
    expect(p.done).toBe(true);
  });

  it('204 and 304 have no body', () => {
    expect(run('HTTP/1.1 204 No Content\r\n\r\n', 100).r.ended).toBe(1);
    expect(run('HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n', 100).r.kind).toBe(BODY_NONE);
  });

  it('no framing header means close-delimited, completed by EOF', () => {
    const { r, p } = run('HTTP/1.1 200 OK\r\n\r\nuntil close', 4);
    expect(r.kind).toBe(BODY_CLOSE);
    expect(p.mustClose).toBe(true);
    expect(r.ended).toBe(0);
    expect(p.onEof()).toBe(true);
    expect(r.body).toBe('until close');
    expect(r.ended).toBe(1);
  });

  it('Transfer-Encoding wins over Content-Length', () => {
    const { r } = run('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n', 100);
    expect(r.kind).toBe(BODY_CHUNKED);
    expect(r.body).toBe('ab');
  });

  it('matches framing header names in any case, and keeps the Connection values (joined) for the hop-by-hop filter', () => {
    const { r, p } = run('HTTP/1.1 200 OK\r\nCONTENT-length: 2\r\ncOnNeCtIoN: x-a\r\nContent-Lengtx: 9\r\nConnection: X-B, keep-alive\r\n\r\nok', 100);
    expect([r.kind, r.length, r.body]).toEqual([BODY_LENGTH, 2, 'ok']);
    expect(p.connection).toBe('x-a, X-B, keep-alive');
    expect(p.mustClose).toBe(false);
    const te = run('HTTP/1.1 200 OK\r\ntransfer-ENCODING: CHUNKED\r\n\r\n2\r\nab\r\n0\r\n\r\n', 100);
    expect([te.r.kind, te.r.body, te.p.connection]).toEqual([BODY_CHUNKED, 'ab', null]);
    // A reset forgets the previous response's Connection value.
    te.p.reset(new Recorder(), false);
    expect(te.p.connection).toBe(null);
  });

  it('HTTP/1.0 closes unless keep-alive; Connection: close is seen', () => {
    expect(run('HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n', 100).p.mustClose).toBe(true);
    expect(run('HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n', 100).p.mustClose).toBe(false);
    expect(run('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n', 100).p.mustClose).toBe(true);
  });

  it('reports bytes after a complete response as not consumed', () => {
    const { consumed, total } = run('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA', 100);
    expect(total - consumed).toBe(5);
  });

  const bad: [string, string][] = [
    ['conflicting content-length', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok'],
    ['non-numeric content-length', 'HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok'],
    ['space before colon', 'HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n'],
    ['bad status line', 'HTTP/2 200 OK\r\n\r\n'],
    ['three-digit status missing', 'HTTP/1.1 20 OK\r\n\r\n'],
    ['bad chunk size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n'],
    ['missing CRLF after chunk', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX'],
    ['101 on a plain request', 'HTTP/1.1 101 Switching Protocols\r\n\r\n'],
    ['control char in value', 'HTTP/1.1 200 OK\r\nX-A: b\u0001c\r\n\r\n'],
    // A bare LF or CR in the reason phrase would be a line break in the client's response (header injection).
    ['bare LF in the reason phrase', 'HTTP/1.1 200 OK\nSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n'],
    ['bare CR in the reason phrase', 'HTTP/1.1 200 OK\rX\r\nContent-Length: 0\r\n\r\n'],
    ['NUL in the reason phrase', 'HTTP/1.1 200 O\u0000K\r\nContent-Length: 0\r\n\r\n'],
    ['DEL in the reason phrase', 'HTTP/1.1 200 O\u007fK\r\nContent-Length: 0\r\n\r\n'],
  ];
  for (const [name, text] of bad) {
    it(`refuses ${name}`, () => {
      expect(() => run(text, 100)).toThrow(ParseError);
    });
  }

  it('refuses an endless head', () => {
    expect(() => run('HTTP/1.1 200 OK\r\n' + 'X-A: b\r\n'.repeat(10000), 1000)).toThrow(/too large/);
  });
  // The bytes of a read are buf[start, end); past `end` the shared read buffer holds older bytes. Found by the
  // upstream WebSocket client's tests: a read ending 1-3 bytes before a head's CRLFCRLF, or between the CR and
  // LF of a chunk-size or trailer line, was completed by stale bytes and the next read parsed from the wrong
  // place. Here the stale bytes are the worst possible: exactly the bytes the next read will bring.
  for (const [name, text, body] of [
    ['a Content-Length response', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello', 'hello'],
    ['a chunked response with trailers', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n', 'hello!'],
  ] as const) {
    it(`${name} cut at every byte: the bytes past a read's end are never read (stale bytes = the next read's)`, () => {
      const all = Buffer.from(text, 'latin1');
      for (let cut = 1; cut < all.length; cut++) {
        const p = new ResponseParser();
        const r = new Recorder();
        p.reset(r, false);
        const shared = Buffer.from(all); // [0, cut) is the first read; past it, what the second read brings
        const first = p.execute(shared, 0, cut);
        expect(first, `cut ${cut}: consumed of the first read`).toBeLessThanOrEqual(cut);
        all.copy(shared, 0, cut);
        shared.fill(0xee, all.length - cut);
        const second = p.execute(shared, 0, all.length - cut);
        expect(first + second, `cut ${cut}: consumed`).toBe(all.length);
        expect(r.body, `cut ${cut}: body`).toBe(body);
        expect(r.ended, `cut ${cut}: ended`).toBe(1);
      }
    });
  }

  // The WebSocket client's handshake (websocket/upstream-client.ts): a 101 ends the response at its head.
  for (const split of splits) {
    it(`allowUpgrade: a 101 is the response, its head only; execute() stops where the head ends (split ${split})`, () => {
      const head = 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n';
      const all = Buffer.from(head + '\x81\x02hi', 'latin1');
      const p = new ResponseParser();
      p.allowUpgrade = true;
      const r = new Recorder();
      p.reset(r, false);
      let at = 0;
      let stoppedAt = -1;
      while (at < all.length && stoppedAt === -1) {
        const n = Math.min(split, all.length - at);
        const used = p.execute(all, at, at + n);
        if (p.done) stoppedAt = at + used;
        at += n;
      }
      expect(r.status).toBe(101);
      expect(r.kind).toBe(BODY_NONE);
      expect(r.headers).toEqual(['Upgrade', 'websocket', 'Sec-WebSocket-Accept', 'x']);
      expect(r.ended, 'no end: the connection is the new protocol\'s now').toBe(0);
      expect(stoppedAt).toBe(head.length);
    });
  }
});
