/**
 * The pure parts of downstream TLS on the node backend: tls-reasons.ts's
 * error -> reason mapping (the codes seen on Node 20 / OpenSSL 3.0, and
 * their OpenSSL 3.2+ names on Node 22+), and node/tls.ts's ClientHello
 * server-name reader (whole, split over reads, split over records, without
 * SNI, malformed) on real ClientHellos captured from node:tls clients.
 */
import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { tlsFailureReason } from '../../../workers/transport/tls-reasons.js';
import { clientHelloServerName, NEED_MORE } from '../../../workers/transport/node/tls.js';

describe('tlsFailureReason', () => {
  const cases: Array<[string, string]> = [
    ['ERR_SSL_UNSUPPORTED_PROTOCOL', 'protocol_version'],
    ['ERR_SSL_NO_SHARED_CIPHER', 'no_shared_cipher'],
    ['ERR_SSL_NO_SUITABLE_KEY_SHARE', 'no_shared_cipher'],
    ['ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM', 'no_shared_cipher'],
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'bad_certificate'],
    ['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'bad_certificate'],
    ['ERR_SSL_SSL/TLS_ALERT_BAD_CERTIFICATE', 'bad_certificate'],
    ['ERR_SSL_SSL/TLS_ALERT_CERTIFICATE_EXPIRED', 'bad_certificate'],
    ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN', 'bad_certificate'],
    ['ERR_TLS_HANDSHAKE_TIMEOUT', 'timeout'],
    ['ERR_SSL_HTTP_REQUEST', 'not_tls'],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'not_tls'],
    ['ERR_SSL_NO_APPLICATION_PROTOCOL', 'other'],
    ['ECONNRESET', 'other'],
    ['ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE', 'other'],
  ];
  it.each(cases)('%s -> %s', (code, reason) => {
    expect(tlsFailureReason(Object.assign(new Error('x'), { code }))).toBe(reason);
  });

  it('falls back to OpenSSL\'s reason text, and to other', () => {
    expect(tlsFailureReason({ reason: 'no shared cipher' })).toBe('no_shared_cipher');
    expect(tlsFailureReason(new Error('error:0A000418:SSL routines::tlsv1 alert unknown ca'))).toBe('bad_certificate');
    expect(tlsFailureReason(new Error('something else'))).toBe('other');
    expect(tlsFailureReason(null)).toBe('other');
    expect(tlsFailureReason('ERR_SSL_NO_SHARED_CIPHER')).toBe('other');
  });
});

/** The first bytes a node:tls client sends (its ClientHello), captured by a TCP server that answers nothing. */
async function capture(opts: tls.ConnectionOptions): Promise<Buffer> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const got = new Promise<Buffer>((resolve) => srv.once('connection', (s) => {
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      const b = Buffer.concat(chunks);
      if (b.length >= 5 && b.length >= 5 + b.readUInt16BE(3)) {
        resolve(b);
        s.destroy();
      }
    });
  }));
  const c = tls.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, rejectUnauthorized: false, ...opts });
  c.on('error', () => {});
  const b = await got;
  c.destroy();
  srv.close();
  return b;
}

describe('clientHelloServerName', () => {
  it('reads the server name of a real ClientHello, and null without SNI', async () => {
    expect(clientHelloServerName(await capture({ servername: 'api.example.com' }))).toBe('api.example.com');
    expect(clientHelloServerName(await capture({ servername: 'Mixed.Case.Test', ALPNProtocols: ['h2', 'http/1.1'] }))).toBe('Mixed.Case.Test');
    expect(clientHelloServerName(await capture({ servername: undefined }))).toBe(null);
  });

  it('NEED_MORE until the whole ClientHello is there, at every split point', async () => {
    const hello = await capture({ servername: 'split.example.com' });
    for (let i = 0; i < hello.length; i++) expect(clientHelloServerName(hello.subarray(0, i)), `at ${i}`).toBe(NEED_MORE);
    expect(clientHelloServerName(hello)).toBe('split.example.com');
  });

  it('a ClientHello fragmented over several handshake records (RFC 8446 5.1)', async () => {
    const hello = await capture({ servername: 'frag.example.com' });
    const body = hello.subarray(5);
    const rec = (b: Buffer) => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, b.length >> 8, b.length & 0xff]), b]);
    const pieces = [body.subarray(0, 3), body.subarray(3, 50), body.subarray(50)];
    const fragmented = Buffer.concat(pieces.map(rec));
    expect(clientHelloServerName(fragmented)).toBe('frag.example.com');
    expect(clientHelloServerName(fragmented.subarray(0, fragmented.length - 1))).toBe(NEED_MORE);
  });

  it('null for what is not a well-formed ClientHello (OpenSSL refuses those itself)', async () => {
    const hello = await capture({ servername: 'x.example.com' });
    const notHello = Buffer.from(hello);
    notHello[5] = 2; // a ServerHello type
    expect(clientHelloServerName(notHello)).toBe(null);
    expect(clientHelloServerName(Buffer.from([0x17, 0x03, 0x03, 0x00, 0x01, 0x00]))).toBe(null); // application data
    expect(clientHelloServerName(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00]))).toBe(null); // empty record
    // A length that runs past the message: cut to the record, its extensions overflow.
    const cut = Buffer.from(hello);
    cut.writeUInt16BE(0xffff, 5 + 4 + 2 + 32 + 1 + cut[5 + 4 + 2 + 32]!); // cipher_suites length
    expect(clientHelloServerName(cut)).toBe(null);
  });
});
