/**
 * TLS for NBD over TCP: TLS-PSK (TLS 1.2, proto.md "TLS support" leaves the
 * kind of credentials to the implementations). qemu and qemu-img speak it
 * with `--object tls-creds-psk,id=tls0,dir=DIR,username=ID,endpoint=client`,
 * DIR holding keys.psk ("ID:HEXKEY"). A PSK was chosen over certificates
 * because qemu's tls-creds-x509 needs a CA certificate (basic constraints
 * CA:TRUE) and the server's own certificate is a self-signed leaf
 * (server/tls.ts); a fresh random key per export is handed out only to a
 * token holder over the HTTPS API, or printed by `clonecast image nbd`.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, lstatSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { join } from 'node:path';
import type { TLSSocketOptions } from 'node:tls';

/** The PSK identity clients use. */
export const PSK_IDENTITY = 'clonecast';
/** OpenSSL names of the PSK suites offered; GnuTLS (qemu) negotiates the ECDHE ones. */
export const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** A PSK and the TLS options that check it. */
export interface NbdPsk {
  identity: string;
  /** The key, hex (the form keys.psk holds). */
  keyHex: string;
  options: TLSSocketOptions;
}

/** A fresh random 256-bit PSK. */
export function newPsk(): NbdPsk {
  const key = randomBytes(32);
  return {
    identity: PSK_IDENTITY,
    keyHex: key.toString('hex'),
    options: {
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.2',
      ciphers: PSK_CIPHERS,
      pskCallback: (_socket: unknown, identity: string | undefined) => {
        const id = Buffer.from(identity ?? '', 'utf8');
        const want = Buffer.from(PSK_IDENTITY, 'utf8');
        return id.length === want.length && timingSafeEqual(id, want) ? key : null;
      },
    } as TLSSocketOptions,
  };
}

/**
 * Writes DIR/keys.psk (mode 0600) for qemu's tls-creds-psk. DIR is made mode
 * 0700, or must already be a folder (not a symbolic link) of ours with mode
 * 0700: the default DIR sits in the working folder, often /tmp, where someone
 * else could have made it first. The key goes to a fresh file, renamed into
 * place, so a keys.psk planted as a link is replaced, never followed.
 */
export function writePskDir(dir: string, psk: NbdPsk): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o777) !== 0o700) {
    const what = !st.isDirectory() ? 'not a folder' : uid !== undefined && st.uid !== uid ? `owned by uid ${st.uid}, not by us` : `mode ${(st.mode & 0o777).toString(8)}, not 700`;
    throw new ClonecastError(ERR.REFUSED, `refusing to write the NBD key into ${dir}: it is ${what}; remove it, or name a new folder with --psk-dir`, { path: dir });
  }
  const tmp = join(dir, `.keys.psk.${randomBytes(8).toString('hex')}`);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, `${psk.identity}:${psk.keyHex}\n`);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, join(dir, 'keys.psk'));
  return dir;
}
