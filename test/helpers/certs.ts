/**
 * Test certificates, made with the system's `openssl` (Debian's openssl
 * package; .ci/run installs it when missing): a private CA, leaf
 * certificates it signs (any DNS names and IP addresses, ECDSA P-256 by
 * default), self-signed ones, expired ones (`openssl ca` with explicit
 * dates, since `req -x509` cannot backdate on OpenSSL 3.0) and client
 * certificates for mTLS. Every file goes into one temporary directory per
 * `CertFactory`; `cleanup()` removes it.
 *
 * Synchronous (execFileSync): a certificate takes ~10 ms, and tests make a
 * handful in beforeAll.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';

export interface CertFiles {
  certFile: string;
  keyFile: string;
  certPem: string;
  keyPem: string;
}

export type KeyType = 'ec' | 'rsa' | 'brainpoolP256r1' | 'secp256k1' | 'rsa-pss' | 'ed25519' | 'ed448';

/** `openssl req -newkey` arguments per LeafOptions.keyType. */
const NEWKEY: Record<KeyType, string[]> = {
  'ec': ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'],
  'rsa': ['-newkey', 'rsa:2048'],
  'brainpoolP256r1': ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:brainpoolP256r1'],
  'secp256k1': ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1'],
  'rsa-pss': ['-newkey', 'rsa-pss', '-pkeyopt', 'rsa_keygen_bits:2048'],
  'ed25519': ['-newkey', 'ed25519'],
  'ed448': ['-newkey', 'ed448'],
};

export interface LeafOptions {
  /** DNS names and IP addresses for subjectAltName; the first is also the CN. */
  names: string[];
  /** Signed by this CA, or self-signed when absent. */
  ca?: CertFiles;
  /** Valid for this many days from now (default 30). */
  days?: number;
  /** Already expired: valid from 2020-01-01 to 2020-02-01. */
  expired?: boolean;
  /**
   * `ec` (P-256, default), `rsa` (2048 bits), or a key BoringSSL (uWS, Bun)
   * cannot load while OpenSSL can: EC on `brainpoolP256r1` or `secp256k1`,
   * `rsa-pss` (2048 bits), `ed448`; `ed25519` (both load it).
   */
  keyType?: KeyType;
  /** extendedKeyUsage: serverAuth (default) or clientAuth. */
  usage?: 'server' | 'client';
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === 'ENOENT') throw new Error('openssl is not installed: apt-get install -y openssl (.ci/run does it)');
    throw new Error(`openssl ${args[0]} failed: ${err.stderr?.toString() ?? String(e)}`);
  }
}

export class CertFactory {
  readonly dir = mkdtempSync(join(tmpdir(), 'turnpike-certs-'));
  private n = 0;

  /** A self-signed CA (basicConstraints CA:TRUE). */
  ca(name = 'Turnpike Test CA'): CertFiles {
    const base = this.next('ca');
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', `${base}.key`, '-out', `${base}.crt`, '-days', '30', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], this.dir);
    return this.read(base);
  }

  /** A leaf certificate for `names`, signed by `ca` or self-signed. */
  leaf(o: LeafOptions): CertFiles {
    const base = this.next(o.names[0]!.replace(/[^a-z0-9.-]/gi, '_'));
    const san = o.names.map((n) => (isIP(n) !== 0 ? `IP:${n}` : `DNS:${n}`)).join(',');
    const eku = o.usage === 'client' ? 'clientAuth' : 'serverAuth';
    const ext = `${base}.ext`;
    writeFileSync(join(this.dir, ext), `subjectAltName=${san}\nextendedKeyUsage=${eku}\nbasicConstraints=CA:FALSE\n`);
    const newkey = NEWKEY[o.keyType ?? 'ec'];
    openssl(['req', '-new', ...newkey, '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${o.names[0]}`], this.dir);
    const signer = o.ca ?? null;
    if (o.expired === true) {
      // `openssl ca` is the one 3.0 command that takes explicit dates.
      const db = `${base}.db`;
      writeFileSync(join(this.dir, db), '');
      writeFileSync(join(this.dir, `${base}.cnf`), [
        '[ca]', 'default_ca=tp', '[tp]', `database=${db}`, `new_certs_dir=.`, 'default_md=sha256', 'policy=any',
        'rand_serial=yes', 'unique_subject=no', 'copy_extensions=none', '[any]', 'commonName=supplied', '',
      ].join('\n'));
      const who = signer === null ? ['-selfsign', '-keyfile', `${base}.key`] : ['-cert', signer.certFile, '-keyfile', signer.keyFile];
      openssl(['ca', '-batch', '-config', `${base}.cnf`, ...who, '-in', `${base}.csr`, '-out', `${base}.crt`, '-notext',
        '-startdate', '20200101000000Z', '-enddate', '20200201000000Z', '-extfile', ext], this.dir);
    } else {
      const who = signer === null ? ['-signkey', `${base}.key`] : ['-CA', signer.certFile, '-CAkey', signer.keyFile, '-CAcreateserial'];
      openssl(['x509', '-req', '-in', `${base}.csr`, ...who, '-out', `${base}.crt`, '-days', String(o.days ?? 30), '-extfile', ext], this.dir);
    }
    return this.read(base);
  }

  /** Writes `text` into the directory as `name` (a bundle, a broken file...) and returns its path. */
  file(name: string, text: string): string {
    const p = join(this.dir, name);
    writeFileSync(p, text);
    return p;
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  private next(stem: string): string {
    return `${++this.n}-${stem}`;
  }

  private read(base: string): CertFiles {
    const certFile = join(this.dir, `${base}.crt`);
    const keyFile = join(this.dir, `${base}.key`);
    return { certFile, keyFile, certPem: readFileSync(certFile, 'utf8'), keyPem: readFileSync(keyFile, 'utf8') };
  }
}
