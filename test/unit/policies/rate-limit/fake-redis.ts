/**
 * A fake Redis on a loopback port that speaks just enough RESP2 for
 * ioredis to connect, and answers errors to the commands a test chooses
 * (or to all of them): to check that no store error ever escapes as an
 * unhandled rejection (store.ts, strict-store.ts). HELLO is always
 * answered NOPROTO (ioredis then speaks RESP2).
 */
import net from 'node:net';

export interface FakeRedis {
  url: string;
  port: number;
  /** Answer an error to every command (HELLO included). */
  failAll: boolean;
  /** Answer an error to these commands (lowercase names). */
  fail: Set<string>;
  /** Commands received, lowercase, in order. */
  readonly seen: string[];
  close(): Promise<void>;
}

/** Parses complete RESP arrays of bulk strings from `buf`; returns the commands and the bytes consumed. */
function parse(buf: Buffer): { commands: string[][]; used: number } {
  const commands: string[][] = [];
  let at = 0;
  for (;;) {
    if (at >= buf.length || buf[at] !== 0x2a /* * */) break;
    let nl = buf.indexOf('\r\n', at);
    if (nl === -1) break;
    const n = Number(buf.toString('latin1', at + 1, nl));
    let p = nl + 2;
    const args: string[] = [];
    let complete = true;
    for (let i = 0; i < n; i++) {
      if (p >= buf.length || buf[p] !== 0x24 /* $ */) { complete = false; break; }
      nl = buf.indexOf('\r\n', p);
      if (nl === -1) { complete = false; break; }
      const len = Number(buf.toString('latin1', p + 1, nl));
      if (nl + 2 + len + 2 > buf.length) { complete = false; break; }
      args.push(buf.toString('utf8', nl + 2, nl + 2 + len));
      p = nl + 2 + len + 2;
    }
    if (!complete) break;
    commands.push(args);
    at = p;
  }
  return { commands, used: at };
}

export async function startFakeRedis(): Promise<FakeRedis> {
  const sockets = new Set<net.Socket>();
  const fake = {
    url: '',
    port: 0,
    failAll: false,
    fail: new Set<string>(),
    seen: [] as string[],
    close: async () => {},
  };
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const { commands, used } = parse(buf);
      buf = buf.subarray(used);
      for (const args of commands) {
        const name = (args[0] ?? '').toLowerCase();
        fake.seen.push(name);
        if (name === 'hello') {
          sock.write('-NOPROTO this fake speaks RESP2 only\r\n');
        } else if (fake.failAll || fake.fail.has(name)) {
          sock.write(`-ERR fake failure for ${name}\r\n`);
        } else if (name === 'ping') {
          sock.write('+PONG\r\n');
        } else if (name === 'info') {
          const info = '# Server\r\nredis_version:7.0.0\r\nloading:0\r\n';
          sock.write(`$${Buffer.byteLength(info)}\r\n${info}\r\n`);
        } else if (name === 'quit') {
          sock.end('+OK\r\n');
        } else if (name === 'evalsha') {
          sock.write('-NOSCRIPT No matching script. Please use EVAL.\r\n');
        } else {
          sock.write('+OK\r\n');
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.port = (server.address() as net.AddressInfo).port;
  fake.url = `redis://127.0.0.1:${fake.port}`;
  fake.close = () => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => resolve());
  });
  return fake;
}
