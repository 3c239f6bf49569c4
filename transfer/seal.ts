/**
 * Optional encryption of the data (--encrypt; docs/protocol.md,
 * "Encryption"): each chunk's stored form is sealed with AES-256-GCM
 * (NIST SP 800-38D) under the session's encryption key, and the 16-byte tag
 * appended. The 96-bit nonce is the chunk index (8 bytes, big-endian) after
 * 4 zero bytes: a session serves one image version, so each chunk index has
 * exactly one stored form, and a resend or a restarted sender seals the same
 * bytes under the same nonce to the same ciphertext (no two plaintexts ever
 * share a nonce under one key). The tag is checked before anything is
 * decompressed.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';

/** Bytes a sealed chunk has beyond its stored form. */
export const SEAL_OVERHEAD = 16;

function nonce(chunk: number): Buffer {
  const iv = Buffer.alloc(12);
  iv.writeBigUInt64BE(BigInt(chunk), 4);
  return iv;
}

/** Seals chunk's stored form: ciphertext then tag. */
export function seal(key: Uint8Array, chunk: number, stored: Buffer): Buffer {
  const c = createCipheriv('aes-256-gcm', key, nonce(chunk));
  const out = Buffer.allocUnsafe(stored.length + SEAL_OVERHEAD);
  const n = c.update(stored).copy(out, 0);
  c.final();
  c.getAuthTag().copy(out, n);
  return out;
}

/** Opens a sealed chunk into out (at least sealed.length - 16 bytes); returns the stored form, or null if the tag does not verify. */
export function open(key: Uint8Array, chunk: number, sealed: Buffer, out: Buffer): Buffer | null {
  if (sealed.length < SEAL_OVERHEAD) return null;
  const d = createDecipheriv('aes-256-gcm', key, nonce(chunk));
  d.setAuthTag(sealed.subarray(sealed.length - SEAL_OVERHEAD));
  const n = d.update(sealed.subarray(0, sealed.length - SEAL_OVERHEAD)).copy(out, 0);
  try {
    d.final();
  } catch {
    return null;
  }
  return out.subarray(0, n);
}
