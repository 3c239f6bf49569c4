/**
 * The two checks of the image format: xxh64 (seed 0) of a chunk's
 * uncompressed bytes is the wire and write check; SHA-256 of the same bytes
 * is the chunk's identity in the store.
 */
import { createHash } from 'node:crypto';

type Hasher = Awaited<ReturnType<typeof import('xxhash-wasm').default>>;
let wasm: Hasher | undefined;
let loading: Promise<unknown> | undefined;
/** A faster xxh64 handed in from outside (native/addon.ts registers the addon's when it is built). */
let addon: { xxh64(buffer: Buffer): bigint } | null = null;

/** Uses this xxh64 from now on (the native addon's; protocol/ loads no addon itself). */
export function useNativeXxh64(impl: { xxh64(buffer: Buffer): bigint }): void {
  addon = impl;
}

/** Which xxh64 is in use: the native addon's, or xxhash-wasm where the addon is not built or not loaded. */
export function xxh64Implementation(): 'native' | 'xxhash-wasm' {
  return addon !== null ? 'native' : 'xxhash-wasm';
}

/** Loads the xxh64 WebAssembly fallback if it is needed; call before xxh64(). */
export async function initHashes(): Promise<void> {
  if (addon !== null) return;
  loading ??= import('xxhash-wasm').then((m) => m.default()).then((h) => (wasm = h));
  await loading;
}

/** xxh64 with seed 0 of data. initHashes() must have resolved. */
export function xxh64(data: Uint8Array): bigint {
  if (addon !== null) return addon.xxh64(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  if (wasm === undefined) throw new Error('initHashes() must be awaited before xxh64()');
  return wasm.h64Raw(data, 0n);
}

/** xxh64 through xxhash-wasm, for tests that compare the two. */
export async function xxh64Wasm(data: Uint8Array): Promise<bigint> {
  return (await (await import('xxhash-wasm')).default()).h64Raw(data, 0n);
}

/** SHA-256 of data as a 32-byte buffer. */
export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}
