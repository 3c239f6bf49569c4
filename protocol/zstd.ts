/**
 * zstd compression for chunks. A chunk's zstd payload is exactly one zstd
 * frame (RFC 8878) whose header declares the content size. The work is done
 * by the system's libzstd through the native addon (native/src/zstd.c),
 * handed in by native/addon.ts; protocol/ loads no addon itself. There is
 * no JavaScript fallback: without libzstd a zstd chunk cannot be read and
 * nothing is compressed with zstd.
 */
import { ClonecastError, ERR } from './errors.js';

/** Compression levels (justified in docs/performance.md, "zstd levels"). */
export const ZSTD = Object.freeze({
  /** Level used by import and capture: the highest that keeps import at 0.8x of `zstd -3 -T0` or better. */
  DEFAULT_LEVEL: 2,
  /** Level `image recompress` uses unless told: compress once, send smaller every time. */
  RECOMPRESS_LEVEL: 19,
  MIN_LEVEL: 1,
  /** ZSTD_maxCLevel() of every libzstd since 1.0. */
  MAX_LEVEL: 22,
});

/** libzstd as the addon exposes it. */
export interface ZstdImpl {
  zstdCompress(src: Buffer, dst: Buffer, level: number): number;
  zstdDecompress(src: Buffer, dst: Buffer): number;
}

let impl: ZstdImpl | null = null;

/** Uses the addon's libzstd from now on (native/addon.ts calls this when libzstd loads). */
export function useNativeZstd(z: ZstdImpl | null): void {
  impl = z;
}

/** True if zstd chunks can be written and read in this process. */
export function zstdAvailable(): boolean {
  return impl !== null;
}

/** Throws CODEC_UNAVAILABLE, saying what to install, unless zstd chunks can be read here (what: what needs them). */
export function requireZstd(what: string): void {
  if (impl === null) throw unavailable(what);
}

function unavailable(what: string): ClonecastError {
  return new ClonecastError(
    ERR.CODEC_UNAVAILABLE,
    `${what} needs zstd, but libzstd.so.1 could not be loaded: install the libzstd1 package (apt-get install libzstd1) and make sure the native module is built (node native/build.mjs)`,
  );
}

/**
 * Compresses raw into out as one frame at level; returns the bytes used, or
 * 0 if the frame would not fit in out (then the chunk is stored raw).
 */
export function zstdCompressInto(raw: Buffer, out: Buffer, level: number): number {
  if (impl === null) throw unavailable('compressing a chunk with zstd');
  return impl.zstdCompress(raw, out, level);
}

/**
 * Decompresses one frame into out, which must be exactly the declared
 * content size; returns out.length, or -1 if the frame is malformed, is not
 * exactly one frame, or declares or yields another length.
 */
export function zstdDecompressInto(payload: Buffer, out: Buffer, where = 'a zstd chunk'): number {
  if (impl === null) throw unavailable(`reading ${where}`);
  return impl.zstdDecompress(payload, out);
}
