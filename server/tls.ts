/**
 * The server's TLS certificate: self-signed, made on first start in
 * DATA/tls/ (cert.pem, key.pem mode 0600), kept across restarts, renewed on
 * request. Clients trust it by its SHA-256 fingerprint (native/pinned-tls.ts),
 * not by a certificate authority, so its names are informative only.
 *
 * The folder appears whole or not at all: the pair is written into a fresh
 * temporary folder, synced, and renamed into place, so a crash never leaves a
 * key without its certificate or the other way round.
 */
import { X509Certificate, webcrypto } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { hostname, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** The certificate's folder inside the data directory. */
export const TLS_DIR = 'tls';
/** How long a new certificate is valid, days. Clients pin it and do not look at its dates; renew it with `clonecast tls renew`. */
export const CERT_DAYS = 3650;

/** The server's certificate and key, and the certificate's fingerprint as clients pin it. */
export interface ServerCert {
  cert: string;
  key: string;
  /** SHA-256 of the certificate (DER), as 32 colon-joined upper-case hex bytes. */
  fingerprint: string;
  /** The folder holding cert.pem and key.pem. */
  dir: string;
  /** Made by this call. */
  created: boolean;
  /** The names and addresses the certificate carries. */
  names: string[];
}

/** The fingerprint clients pin, from a certificate in PEM. */
export function fingerprintOf(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256;
}

/** Reads DATA/tls if it is there (undefined if not); a damaged pair is an error that says what to do. */
export function readCert(dataRoot: string): ServerCert | undefined {
  const dir = join(dataRoot, TLS_DIR);
  if (!existsSync(join(dir, 'cert.pem'))) return undefined;
  try {
    const cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
    const key = readFileSync(join(dir, 'key.pem'), 'utf8');
    const x = new X509Certificate(cert);
    return { cert, key, fingerprint: x.fingerprint256, dir, created: false, names: (x.subjectAltName ?? '').split(', ').map((s) => s.replace(/^(DNS|IP Address):/, '')).filter((s) => s !== '') };
  } catch (err) {
    throw new ClonecastError(ERR.DAMAGED, `the server's certificate in ${dir} cannot be read (${(err as Error).message}); run "clonecast tls renew" to make a new one (clients then need its new fingerprint)`);
  }
}

/** The names a new certificate carries: this host's name, localhost, the loopback and every interface address, and any given. */
export function certNames(extra: string[] = []): string[] {
  const addrs = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.replace(/%.*$/, '')));
  return [...new Set([hostname(), 'localhost', '127.0.0.1', '::1', ...addrs, ...extra].filter((n) => n !== '' && !/^(0\.0\.0\.0|::)$/.test(n)))];
}

/** Makes a new self-signed ECDSA P-256 certificate for these names (not saved). */
export async function makeCert(names: string[]): Promise<{ cert: string; key: string }> {
  // The X.509 library needs the Reflect metadata polyfill; only the server loads either.
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const isIp = (n: string) => /^[\d.]+$/.test(n) || n.includes(':');
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex').replace(/^[89a-f]/, '7'),
    name: `CN=clonecast ${hostname().replace(/[,=+<>#;"\\]/g, '')}`.trim(),
    notBefore: new Date(now - 3600_000),
    notAfter: new Date(now + CERT_DAYS * 86400_000),
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names.map((n) => ({ type: isIp(n) ? ('ip' as const) : ('dns' as const), value: n }))),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  return { cert: cert.toString('pem') + '\n', key: `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n` };
}

function writeSynced(path: string, text: string, mode: number): void {
  const fd = openSync(path, 'wx', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Saves a certificate and key as DATA/tls; with replace, the folder there is kept as tls.old, else one already there wins. */
function save(dataRoot: string, made: { cert: string; key: string }, replace: boolean): void {
  const tmp = mkdtempSync(join(dataRoot, '.tls-'));
  try {
    writeSynced(join(tmp, 'key.pem'), made.key, 0o600);
    writeSynced(join(tmp, 'cert.pem'), made.cert, 0o644);
    const dir = join(dataRoot, TLS_DIR);
    if (replace && existsSync(dir)) {
      rmSync(`${dir}.old`, { recursive: true, force: true });
      renameSync(dir, `${dir}.old`);
    }
    renameSync(tmp, dir);
    const d = openSync(dataRoot, 'r');
    try {
      fsyncSync(d);
    } finally {
      closeSync(d);
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    // Another server starting on this data directory made it first: theirs is the certificate.
    if (!replace && readCert(dataRoot) !== undefined) return;
    throw new ClonecastError(ERR.WRITE_ERROR, `cannot save the server's certificate in ${dataRoot} (${(err as Error).message})`);
  }
}

/** The server's certificate, made and saved on first use. */
export async function loadOrCreateCert(dataRoot: string, names: string[] = []): Promise<ServerCert> {
  const have = readCert(dataRoot);
  if (have !== undefined) return have;
  const all = certNames(names);
  save(dataRoot, await makeCert(all), false);
  const now = readCert(dataRoot)!;
  return { ...now, created: true };
}

/** Replaces the server's certificate with a new one (a running server uses it from its next start). */
export async function renewCert(dataRoot: string, names: string[] = []): Promise<ServerCert> {
  save(dataRoot, await makeCert(certNames(names)), true);
  return { ...readCert(dataRoot)!, created: true };
}
