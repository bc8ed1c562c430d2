/**
 * A raw HTTP/1.1 client connection for tests that must control every byte
 * (repeated headers, odd Host values, HEAD, pipelining) and see every byte
 * back, with the framing checked: one response is read exactly by its
 * Content-Length, chunked coding, or no body (HEAD, 1xx, 204, 304), per
 * RFC 9112 6.3, and anything after it stays for the next read.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
  reason: string;
  /** [name (lowercase), value] in order; values as latin1 strings (one char per byte). */
  headers: [string, string][];
  /** The head bytes as received (status line to the blank line). */
  head: Buffer;
  body: Buffer;
}

export class RawConnection {
  readonly socket: net.Socket;
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    socket.on('error', () => {});
    this.closedPromise = new Promise((resolve) => socket.on('close', () => {
      this.closed = true;
      this.wake();
      resolve();
    }));
  }

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RawConnection(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  send(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Waits for more bytes (or close); rejects after `ms`. */
  private more(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.waiter = null; reject(new Error(`no response within ${ms} ms; got ${JSON.stringify(this.buf.toString('latin1'))}`)); }, ms);
      this.waiter = () => { clearTimeout(t); resolve(); };
    });
  }

  /** Reads one response; `headRequest` = it answers a HEAD (no body whatever the headers say). */
  async read(headRequest = false, ms = 5000): Promise<RawResponse> {
    let end: number;
    while ((end = this.buf.indexOf('\r\n\r\n')) === -1) {
      if (this.closed) throw new Error(`connection closed before a response head; got ${JSON.stringify(this.buf.toString('latin1'))}`);
      await this.more(ms);
    }
    const head = this.buf.subarray(0, end);
    const lines = head.toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3})(?: (.*))?$/.exec(lines[0]!);
    if (m === null) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
    const status = Number(m[1]);
    const headers = lines.slice(1).map((l): [string, string] => {
      const c = l.indexOf(':');
      return [l.slice(0, c).toLowerCase(), l.slice(c + 1).trim()];
    });
    this.buf = this.buf.subarray(end + 4);
    if (status < 200) return this.read(headRequest, ms); // interim
    const get = (n: string) => headers.filter(([k]) => k === n).map(([, v]) => v);
    let body = Buffer.alloc(0);
    const te = get('transfer-encoding');
    if (headRequest || status === 204 || status === 304) {
      // no body
    } else if (te.length > 0) {
      if (!/chunked$/i.test(te.join(','))) throw new Error('unexpected transfer coding ' + te.join(','));
      const parts: Buffer[] = [];
      for (;;) {
        let eol: number;
        while ((eol = this.buf.indexOf('\r\n')) === -1) await this.needMore(ms);
        const size = parseInt(this.buf.subarray(0, eol).toString('latin1'), 16);
        if (!Number.isFinite(size)) throw new Error('bad chunk size');
        if (size === 0) {
          // Last chunk: optional trailer lines, then an empty line.
          let t: number;
          while ((t = this.buf.indexOf('\r\n\r\n', eol)) === -1) await this.needMore(ms);
          this.buf = this.buf.subarray(t + 4);
          break;
        }
        while (this.buf.length < eol + 2 + size + 2) await this.needMore(ms);
        parts.push(this.buf.subarray(eol + 2, eol + 2 + size));
        this.buf = this.buf.subarray(eol + 2 + size + 2);
      }
      body = Buffer.concat(parts);
    } else {
      const cl = get('content-length');
      if (cl.length !== 1) throw new Error(`expected one Content-Length, got ${JSON.stringify(cl)}`);
      const n = Number(cl[0]);
      while (this.buf.length < n) await this.needMore(ms);
      body = Buffer.from(this.buf.subarray(0, n));
      this.buf = this.buf.subarray(n);
    }
    return { status, reason: m[2] ?? '', headers, head: Buffer.from(head), body };
  }

  private async needMore(ms: number): Promise<void> {
    if (this.closed) throw new Error('connection closed inside a response body');
    await this.more(ms);
  }

  /** Bytes received and not read as part of a response. */
  get leftover(): Buffer {
    return this.buf;
  }

  /** Resolves true if the connection closes within `ms`. */
  async closesWithin(ms: number): Promise<boolean> {
    if (this.closed) return true;
    return Promise.race([this.closedPromise.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** All values of a header in a raw response. */
export function headerValues(r: RawResponse, name: string): string[] {
  return r.headers.filter(([k]) => k === name).map(([, v]) => v);
}

/** One request on a fresh connection; the connection is returned for more. */
export async function rawExchange(port: number, data: string | Buffer, headRequest = false): Promise<{ res: RawResponse; conn: RawConnection }> {
  const conn = await RawConnection.open(port);
  conn.send(data);
  return { res: await conn.read(headRequest), conn };
}
