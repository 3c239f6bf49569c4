/**
 * LZ4 block compression for chunks. The payload layout is lz4-napi's block
 * API: u32 little-endian uncompressed length, then one LZ4 block (LZ4 Block
 * Format spec). Uses the native addon's liblz4 when it is there (~7x faster
 * than lz4-napi's compressor on binaries here), lz4-napi otherwise; both
 * produce and read the same layout.
 */
import { createRequire } from 'node:module';

/** liblz4 handed in from outside (native/addon.ts registers the addon's when it is built with liblz4). */
let fast: { lz4Compress(src: Buffer, dst: Buffer): number; lz4Decompress(src: Buffer, dst: Buffer): number } | null = null;

/** Uses liblz4 from the native addon from now on (protocol/ loads no addon itself). */
export function useNativeLz4(impl: NonNullable<typeof fast>): void {
  fast = impl;
}

type Lz4Napi = typeof import('lz4-napi');
let napi: Lz4Napi | undefined;

/** lz4-napi, loaded only when liblz4 is not there (it costs startup time in every worker). */
function lz4napi(): Lz4Napi {
  napi ??= createRequire(import.meta.url)('lz4-napi') as Lz4Napi;
  return napi;
}

/** Which implementation is in use: "liblz4" or "lz4-napi". */
export function lz4Implementation(): 'liblz4' | 'lz4-napi' {
  return fast !== null ? 'liblz4' : 'lz4-napi';
}

/**
 * Compresses raw into out (prefix + block); returns the bytes used, or 0 if
 * the result would not fit in out (then the chunk is stored raw).
 */
export function lz4CompressInto(raw: Buffer, out: Buffer): number {
  if (fast !== null) return fast.lz4Compress(raw, out);
  const c = lz4napi().compressSync(raw);
  if (c.length > out.length) return 0;
  c.copy(out);
  return c.length;
}

/**
 * Decompresses payload (prefix + block) into out; returns the bytes
 * written, or -1 if the block is malformed or does not fit in out.
 */
export function lz4DecompressInto(payload: Buffer, out: Buffer): number {
  if (fast !== null) return fast.lz4Decompress(payload, out);
  let raw: Buffer;
  try {
    raw = lz4napi().uncompressSync(payload);
  } catch {
    return -1;
  }
  if (raw.length > out.length) return -1;
  raw.copy(out);
  return raw.length;
}
