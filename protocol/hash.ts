/**
 * The two checks of the image format: xxh64 (seed 0) of a chunk's
 * uncompressed bytes is the wire and write check; SHA-256 of the same bytes
 * is the chunk's identity in the store.
 */
import { createHash } from 'node:crypto';
import xxhash from 'xxhash-wasm';

type Hasher = Awaited<ReturnType<typeof xxhash>>;
let hasher: Hasher | undefined;
let loading: Promise<Hasher> | undefined;

/** Loads the xxh64 WebAssembly module once; call before xxh64(). */
export async function initHashes(): Promise<void> {
  loading ??= xxhash();
  hasher = await loading;
}

/** xxh64 with seed 0 of data. initHashes() must have resolved. */
export function xxh64(data: Uint8Array): bigint {
  if (hasher === undefined) throw new Error('initHashes() must be awaited before xxh64()');
  return hasher.h64Raw(data, 0n);
}

/** SHA-256 of data as a 32-byte buffer. */
export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}
