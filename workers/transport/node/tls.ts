/**
 * Downstream TLS on the node backend (server.tls, issue 15): the certificates
 * of one config as node:tls SecureContexts, picked by server name (SNI), and
 * the handshake of each accepted connection up to the point where it becomes
 * an ordinary Connection of app.ts (request parser, WebSocket upgrade,
 * header/idle/body timers: all unchanged, over the TLSSocket).
 *
 * A connection (NodeApp.acceptHandle with TLS on):
 *  1. The accepted TCP handle is wrapped in a net.Socket and its first reads
 *     are looked at. A TLS client's first byte is 0x16 (a handshake record,
 *     RFC 8446 5.1): its ClientHello is read (usually one read) up to the
 *     server name (clientHelloServerName), the bytes are put back (unshift)
 *     and a server tls.TLSSocket with the certificate for that name is built
 *     over the socket (node:tls feeds what the socket holds to OpenSSL
 *     first). Anything else is not TLS (counted `not_tls`): a request line
 *     (an uppercase letter first) is answered with a plain `400` saying
 *     "plain HTTP request sent to HTTPS port" and closed (as nginx does), any
 *     other byte closes at once.
 *  2. SNI (RFC 6066 3): an `sni` entry's exact name, then its wildcard
 *     (`*.example.com` covers exactly one label: a.example.com, not
 *     a.b.example.com nor example.com), then the default certificate; names
 *     compare case-insensitively. With `sniStrict`, a name no entry lists and
 *     the default certificate does not cover, or no name at all, is refused:
 *     the handshake goes on with a context that has no certificate, so
 *     OpenSSL fails it with a handshake_failure alert (the client sees an
 *     alert, not a reset) and the default certificate is never shown
 *     (`unknown_server_name`).
 *  3. The whole handshake (from accept) must finish within
 *     server.timeouts.headerMs, checked by the app's one-a-second sweep (no
 *     timer per connection): a client that connects and sends nothing, or
 *     trickles its ClientHello, holds its socket that long at most
 *     (`timeout`).
 *  4. 'secure': counted (G_TLS_HANDSHAKES) and handed to the app as a
 *     Connection. Failures are counted once each into G_TLS_FAILURES + the
 *     reason's index (tls-reasons.ts). A connection closed before sending
 *     any byte (a TCP health check, a port scan) is not a handshake and is
 *     not counted; one that closes or resets in the middle is `other`.
 *
 * Reload (setTls with a new config): new contexts for new connections; open
 * connections and handshakes already under way keep the context they got.
 * Client-initiated renegotiation (TLS 1.2) is refused (disableRenegotiation).
 *
 * Session resumption works within one worker thread (node:tls's per-context
 * session ticket keys; all contexts of a worker share one key, kept across
 * reloads): a client resuming on another thread does a full handshake.
 */
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { Errors, errorBodyWith } from '../../../common/errors.js';
import { G_TLS_FAILURES, G_TLS_HANDSHAKES, type TlsFailureReason } from '../../../common/metrics-layout.js';
import type { ServerTlsConfig, TlsKeyPair } from '../../../common/config/types.js';
import { TLS_REASON_INDEX, tlsFailureReason } from '../tls-reasons.js';
import { ConfigRefusedError } from '../backend.js';
import { certSetting, describeKey } from '../tls-load.js';

/** First byte of a TLS handshake record (ContentType handshake(22), RFC 8446 5.1). */
const TLS_HANDSHAKE_RECORD = 0x16;

/** The answer to a plain HTTP request on the TLS port (nginx: 400 "The plain HTTP request was sent to HTTPS port"). */
export const PLAIN_HTTP_MESSAGE = 'The plain HTTP request was sent to HTTPS port; use https://.';

/** One ticket key per worker thread (48 bytes: name, HMAC and AES keys), shared by every context it builds so that resumption survives SNI and reloads. */
let ticketKeys: Buffer | null = null;

/** `*.example.com` -> `example.com`; anything else -> null. */
function wildcardSuffix(name: string): string | null {
  return name.startsWith('*.') && name.length > 2 ? name.slice(2) : null;
}

/** The name without a trailing dot, lowercase (DNS names compare case-insensitively, RFC 4343). */
function normalName(name: string): string {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  return n.toLowerCase();
}

/**
 * The SecureContexts of one `server.tls` (built once per config and worker
 * thread) and the name -> context choice.
 *
 * The context is chosen before the TLSSocket exists, from the server name
 * in the ClientHello (clientHelloServerName), not with node:tls's
 * SNICallback: node:tls adds the SNI context's certificate to the ones the
 * connection started with (its UseSNIContext calls SSL_use_certificate),
 * so a default ECDSA certificate stayed in the ECDSA slot next to an RSA
 * SNI certificate, and OpenSSL served the default one (measured: TLS 1.3,
 * `*.example.com` with RSA, default with P-256). And with no SNI, node:tls
 * calls no callback at all, so sniStrict could not refuse those.
 */
/**
 * Why OpenSSL would not build the context of `kp` (null: sniStrict's
 * context without a certificate) with `cfg`'s settings: the pair alone is
 * loaded again to tell whether the pair or the settings are at fault.
 */
function refused(cfg: ServerTlsConfig, kp: TlsKeyPair | null, err: unknown): ConfigRefusedError {
  const why = (err instanceof Error ? err.message : String(err)).replace(/^error:[0-9A-Fa-f]+:[^:]*::?/, '');
  let pairLoads = true;
  if (kp !== null) {
    try {
      tls.createSecureContext({ cert: kp.certPem, key: kp.keyPem });
    } catch {
      pairLoads = false;
    }
  }
  if (kp !== null && !pairLoads) {
    return new ConfigRefusedError(`${certSetting(cfg, kp)} "${kp.certFile}": the node backend's OpenSSL cannot load this certificate/key ` +
      `(${describeKey(kp.keyPem)}: ${why}); use an RSA (2048+) or ECDSA P-256/P-384 key and its certificate, leaf first`);
  }
  return new ConfigRefusedError(`server.tls: the node backend's OpenSSL cannot load ciphers "${cfg.ciphers}", ecdhCurve "${cfg.ecdhCurve}", minVersion ${cfg.minVersion} ` +
    `(${why}); use names such as ECDHE-ECDSA-AES128-GCM-SHA256 and X25519:prime256v1, or remove the settings (the defaults load)`);
}

export class ServerTlsContexts {
  readonly config: ServerTlsConfig;
  /** TLSSocket options for the default certificate. */
  readonly defaultOptions: tls.TLSSocketOptions;
  /** sniStrict: the same settings without a certificate (what a refused name gets: OpenSSL fails the handshake); else null. */
  readonly refuseOptions: tls.TLSSocketOptions | null;
  private readonly exact = new Map<string, tls.TLSSocketOptions>();
  private readonly wild = new Map<string, tls.TLSSocketOptions>();
  /** The names the default certificate covers (sniStrict): exact ones, and wildcards' suffixes. */
  private readonly defaultExact = new Set<string>();
  private readonly defaultWild = new Set<string>();

  /**
   * Throws a ConfigRefusedError (../backend.ts) naming the setting when
   * OpenSSL cannot load a certificate/key pair (`server.tls.sni[1].cert
   * "<path>" ...`) or the settings (ciphers, ecdhCurve, minVersion) with it;
   * the validator loads the same with the same OpenSSL, so this is a last
   * guard (Backend.prepare).
   */
  constructor(config: ServerTlsConfig) {
    this.config = config;
    ticketKeys ??= randomBytes(48);
    const base: tls.SecureContextOptions = {
      minVersion: config.minVersion,
      maxVersion: 'TLSv1.3',
      ciphers: config.ciphers,
      ecdhCurve: config.ecdhCurve,
    };
    const alpn = config.alpn.length > 0 ? { ALPNProtocols: [...config.alpn] } : {};
    // One options object per certificate, shared by its connections (node:tls copies it).
    const make = (kp: TlsKeyPair | null): tls.TLSSocketOptions => {
      let ctx: tls.SecureContext;
      try {
        ctx = tls.createSecureContext(kp === null ? base : { ...base, cert: kp.certPem, key: kp.keyPem });
      } catch (err) {
        throw refused(config, kp, err);
      }
      // (Node's SecureContext; Bun's node:tls has no setTicketKeys.)
      (ctx.context as { setTicketKeys?(k: Buffer): void }).setTicketKeys?.(ticketKeys!);
      return { isServer: true, secureContext: ctx, requestCert: false, rejectUnauthorized: false, ...alpn };
    };
    this.defaultOptions = make(config.default);
    // Entries in order: the first one listing a name wins it (the config refuses duplicates anyway).
    for (const kp of config.sni) {
      const o = make(kp);
      for (const h of kp.hosts) {
        const name = normalName(h);
        const suffix = wildcardSuffix(name);
        const map = suffix === null ? this.exact : this.wild;
        const key = suffix ?? name;
        if (!map.has(key)) map.set(key, o);
      }
    }
    if (config.sniStrict) {
      this.refuseOptions = make(null);
      for (const n of config.default.names) {
        const name = normalName(n);
        const suffix = wildcardSuffix(name);
        if (suffix === null) this.defaultExact.add(name);
        else this.defaultWild.add(suffix);
      }
    } else {
      this.refuseOptions = null;
    }
  }

  /**
   * The TLSSocket options (its certificate) for a client's server name, or
   * for none (null): exact sni name, then wildcard (one label), then the
   * default; under sniStrict, `refuseOptions` for no name and for a name
   * neither an entry nor the default certificate covers.
   */
  select(servername: string | null): tls.TLSSocketOptions {
    if (servername === null) return this.refuseOptions ?? this.defaultOptions;
    const name = normalName(servername);
    const e = this.exact.get(name);
    if (e !== undefined) return e;
    const dot = name.indexOf('.');
    const suffix = dot > 0 ? name.slice(dot + 1) : null;
    if (suffix !== null) {
      const w = this.wild.get(suffix);
      if (w !== undefined) return w;
    }
    if (this.refuseOptions === null) return this.defaultOptions;
    if (this.defaultExact.has(name) || (suffix !== null && this.defaultWild.has(suffix))) return this.defaultOptions;
    return this.refuseOptions;
  }
}

// ---------------------------------------------------------------- ClientHello

/** clientHelloServerName: more bytes are needed. */
export const NEED_MORE: unique symbol = Symbol('need more');
/** The longest ClientHello read to find its server name (bytes of handshake message); beyond, it is left to OpenSSL (no name). */
export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;

/**
 * The host_name of the server_name extension (RFC 6066 3) of the
 * ClientHello that begins `b` (TLS records, RFC 8446 5.1 / 4.1.2; the
 * message may span several handshake records). NEED_MORE until the
 * whole ClientHello is there; null when it has no server name, or when the
 * bytes are not a well-formed ClientHello (OpenSSL then refuses them with
 * its own error). The name is returned as sent (latin1), not checked.
 */
export function clientHelloServerName(b: Buffer): string | null | typeof NEED_MORE {
  let msg: Buffer | null = null;
  let need = -1;
  let off = 0;
  let parts: Buffer[] | null = null;
  let have = 0;
  for (;;) {
    if (b.length < off + 5) return NEED_MORE;
    if (b[off] !== TLS_HANDSHAKE_RECORD) return null;
    const len = b.readUInt16BE(off + 3);
    if (len === 0) return null;
    if (b.length < off + 5 + len) return NEED_MORE;
    const frag = b.subarray(off + 5, off + 5 + len);
    off += 5 + len;
    if (parts === null && off === 5 + len) {
      msg = frag;
    } else {
      parts ??= [msg!];
      parts.push(frag);
      msg = null;
    }
    have += len;
    if (need < 0 && have >= 4) {
      const m = msg ?? Buffer.concat(parts!);
      if (m[0] !== 1) return null; // not a ClientHello
      need = 4 + m.readUIntBE(1, 3);
      if (need > MAX_CLIENT_HELLO_BYTES) return null;
    }
    if (need >= 0 && have >= need) break;
  }
  const m = msg ?? Buffer.concat(parts!);
  const end = need;
  let p = 4 + 2 + 32; // type, length; legacy_version, random
  if (p + 1 > end) return null;
  p += 1 + m[p]!; // legacy_session_id
  if (p + 2 > end) return null;
  p += 2 + m.readUInt16BE(p); // cipher_suites
  if (p + 1 > end) return null;
  p += 1 + m[p]!; // legacy_compression_methods
  if (p + 2 > end) return null; // no extensions
  const extEnd = p + 2 + m.readUInt16BE(p);
  p += 2;
  if (extEnd > end) return null;
  while (p + 4 <= extEnd) {
    const type = m.readUInt16BE(p);
    const len = m.readUInt16BE(p + 2);
    p += 4;
    if (p + len > extEnd) return null;
    if (type === 0) {
      // server_name: ServerNameList, entries of name_type (0: host_name) and a 16-bit length.
      if (len < 2) return null;
      const listEnd = p + 2 + m.readUInt16BE(p);
      if (listEnd > p + len) return null;
      let q = p + 2;
      while (q + 3 <= listEnd) {
        const nameType = m[q]!;
        const nl = m.readUInt16BE(q + 1);
        q += 3;
        if (q + nl > listEnd) return null;
        if (nameType === 0) return nl === 0 ? null : m.toString('latin1', q, q + nl);
        q += nl;
      }
      return null;
    }
    p += len;
  }
  return null;
}

// ---------------------------------------------------------------- handshakes

/** What a handshake hands its socket to once it is secure (NodeApp). */
export interface TlsHost {
  /** The worker's metrics cells, or null (tests). */
  readonly tlsMetrics: Float64Array | null;
  /** server.timeouts.headerMs: the handshake deadline from accept. */
  readonly headerTimeoutMs: number;
  /** A completed handshake: the socket becomes a Connection. */
  secured(socket: tls.TLSSocket): void;
  /** The handshake is over (secured or failed): stop sweeping it. */
  handshakeDone(h: TlsHandshake): void;
}

const kHandshake = Symbol('turnpike.tls.handshake');

function onRawData(this: net.Socket, chunk: Buffer): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.hello(chunk);
}

function onRawEnd(this: net.Socket): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.clientGone(null);
}

function onRawError(this: net.Socket, err: Error): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.clientGone(err);
}

function onRawClose(this: net.Socket): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.clientGone(null);
}

function onTlsSecure(this: tls.TLSSocket): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.secure();
}

function onTlsError(this: tls.TLSSocket, err: Error): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.fail(err);
}

function onTlsEnd(this: tls.TLSSocket): void {
  ((this as any)[kHandshake] as TlsHandshake | undefined)?.fail(null);
}

const noop = (): void => {};

/** After the plain-HTTP answer, how long the socket is still read (and discarded) so that the answer is not reset away (ms). */
export const PLAIN_HTTP_LINGER_MS = 2_000;

/**
 * One accepted connection until its TLS handshake completes or fails.
 * Swept by the app (sweep(now)): `deadline` is performance.now() ms.
 */
export class TlsHandshake {
  private readonly host: TlsHost;
  readonly contexts: ServerTlsContexts;
  private readonly raw: net.Socket;
  private tlsSocket: tls.TLSSocket | null = null;
  deadline: number;
  /** The ClientHello's bytes read so far (usually one read), or null: none yet. */
  private acc: Buffer | null = null;
  /** Answered as plain HTTP: lingering until the client closes or the deadline. */
  private lingering = false;
  /** sniStrict refused its name (or its lack of one). */
  private refused = false;
  done = false;

  constructor(host: TlsHost, contexts: ServerTlsContexts, handle: unknown) {
    this.host = host;
    this.contexts = contexts;
    this.deadline = performance.now() + host.headerTimeoutMs;
    const raw = new net.Socket({ handle, allowHalfOpen: true } as net.SocketConstructorOpts);
    this.raw = raw;
    (raw as any)[kHandshake] = this;
    raw.on('error', onRawError);
    raw.on('end', onRawEnd);
    raw.on('close', onRawClose);
    raw.on('data', onRawData);
  }

  /** A read before TLS began: the ClientHello, read up to its server name; anything else is refused. */
  hello(chunk: Buffer): void {
    if (this.done || this.lingering || chunk.length === 0) return;
    if (this.acc === null && chunk[0] !== TLS_HANDSHAKE_RECORD) {
      this.notTls(chunk[0]!);
      return;
    }
    const acc = this.acc === null ? chunk : Buffer.concat([this.acc, chunk]);
    const name = clientHelloServerName(acc);
    if (name === NEED_MORE && acc.length <= MAX_CLIENT_HELLO_BYTES + 1024) {
      this.acc = acc;
      return;
    }
    this.acc = null;
    const opts = this.contexts.select(name === NEED_MORE ? null : name);
    this.refused = opts === this.contexts.refuseOptions;
    const raw = this.raw;
    // The bytes go back to the socket; node:tls hands what the socket holds to OpenSSL first.
    raw.off('data', onRawData);
    raw.pause();
    raw.unshift(acc);
    raw.off('end', onRawEnd);
    raw.off('close', onRawClose);
    raw.off('error', onRawError);
    raw.on('error', noop);
    const s = new tls.TLSSocket(raw, opts);
    this.tlsSocket = s;
    (s as any)[kHandshake] = this;
    s.disableRenegotiation();
    s.on('secure', onTlsSecure);
    s.on('error', onTlsError);
    s.on('end', onTlsEnd);
    s.on('close', onTlsEnd);
  }

  /** Not a TLS client: a plain HTTP request gets a 400 saying so, anything else is closed. */
  private notTls(first: number): void {
    this.count('not_tls');
    const raw = this.raw;
    if (first >= 0x41 && first <= 0x5a) {
      // A request line (an uppercase method): answered, then read and discarded until the client closes (lingering).
      const body = errorBodyWith(Errors.BAD_REQUEST, PLAIN_HTTP_MESSAGE, '');
      raw.end('HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ' + Buffer.byteLength(body) +
        '\r\nconnection: close\r\ndate: ' + new Date().toUTCString() + '\r\n\r\n' + body);
      this.lingering = true;
      this.deadline = performance.now() + PLAIN_HTTP_LINGER_MS;
      return;
    }
    this.finish();
    raw.destroy();
  }

  /** The raw socket ended or failed before TLS began. */
  clientGone(err: Error | null): void {
    if (this.done) return;
    // Before any byte: a TCP check or a scan, not a handshake. After the plain-HTTP answer: counted already.
    if (this.acc !== null) this.count(err === null ? 'other' : tlsFailureReason(err));
    this.finish();
    this.raw.destroy();
  }

  /** The handshake completed. */
  secure(): void {
    if (this.done) return;
    const s = this.tlsSocket!;
    this.finish();
    s.off('secure', onTlsSecure);
    s.off('error', onTlsError);
    s.off('end', onTlsEnd);
    s.off('close', onTlsEnd);
    (s as any)[kHandshake] = undefined;
    (this.raw as any)[kHandshake] = undefined;
    const m = this.host.tlsMetrics;
    if (m !== null) m[G_TLS_HANDSHAKES]!++;
    this.host.secured(s);
  }

  /** The handshake failed (`err`), or the client closed it (null). */
  fail(err: Error | null): void {
    if (this.done) return;
    let r: TlsFailureReason = err === null ? 'other' : tlsFailureReason(err);
    // A refused name (or none, under sniStrict) fails for want of a certificate: say why.
    if (this.refused && r === 'no_shared_cipher') r = 'unknown_server_name';
    this.count(r);
    this.finish();
    this.tlsSocket?.destroy();
  }

  /** From the app's sweep: past the deadline, the handshake (or the lingering plain answer) is over. */
  sweep(now: number): void {
    if (this.done || now < this.deadline) return;
    if (!this.lingering) this.count('timeout');
    this.finish();
    if (this.tlsSocket !== null) this.tlsSocket.destroy();
    else this.raw.destroy();
  }

  /** Closes the connection now, uncounted (the app closes). */
  destroy(): void {
    if (this.done) return;
    this.finish();
    if (this.tlsSocket !== null) this.tlsSocket.destroy();
    else this.raw.destroy();
  }

  private finish(): void {
    this.done = true;
    this.acc = null;
    this.host.handshakeDone(this);
  }

  private count(reason: TlsFailureReason): void {
    const m = this.host.tlsMetrics;
    if (m !== null) m[G_TLS_FAILURES + TLS_REASON_INDEX[reason]]!++;
  }
}
