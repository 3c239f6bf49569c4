/**
 * Loads the compiled N-API addon (native/build/Release/clonecast_native.node)
 * and types its functions. Arguments are checked strictly in C; errors carry
 * errno names as `code` like Node's own fs errors.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { useNativeXxh64 } from '../protocol/hash.js';
import { useNativeLz4 } from '../protocol/lz4.js';
import { useNativeMac } from '../protocol/mac.js';

/** What deviceInfo() reports about an open file or block device. */
export interface DeviceInfo {
  blockDevice: boolean;
  direct: boolean;
  size: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  major: number;
  minor: number;
}

/** The addon's functions. */
export interface NativeAddon {
  open(path: string, write: boolean, direct: boolean, create?: boolean): number;
  close(fd: number): void;
  seekData(fd: number, position: number): number;
  deviceInfo(fd: number): DeviceInfo;
  alignedBuffer(size: number, alignment: number): Buffer;
  isAligned(buffer: Buffer, alignment: number): boolean;
  read(fd: number, buffer: Buffer, offset: number, length: number, position: number): Promise<number>;
  write(fd: number, buffer: Buffer, offset: number, length: number, position: number): Promise<number>;
  flush(fd: number): Promise<void>;
  syncfs(fd: number): Promise<void>;
  discard(fd: number, position: number, length: number): Promise<void>;
  zeroRange(fd: number, position: number, length: number): Promise<void>;
  rereadPartitions(fd: number): Promise<void>;
  lz4Available(): boolean;
  xxh64(buffer: Buffer): bigint;
  lz4Compress(src: Buffer, dst: Buffer): number;
  lz4Decompress(src: Buffer, dst: Buffer): number;
  udpSocket(device: string, address: string, port: number): number;
  macKey(key: Buffer): Buffer;
  macSign(state: Buffer, packet: Buffer, length: number): void;
  macVerify(state: Buffer, packet: Buffer, length: number): boolean;
  /** ISA-L (libisal.so.2) was loaded for the parity code; otherwise the portable code runs. */
  fecIsal(): boolean;
  /** Reed-Solomon parity (native/src/fec.c): the parity fragments of indexes parity of k data fragments of len bytes; mode 1 forces the portable code. */
  fecEncode(k: number, len: number, data: Buffer, parity: Buffer, out: Buffer, mode: number): void;
  /** Rebuilds the data fragments want from k received fragments whose rows are rows (< k data, k + p parity p); false if the rows are not invertible. */
  fecDecode(k: number, len: number, have: Buffer, rows: Buffer, want: Buffer, out: Buffer, mode: number): boolean;
}

/** The repository root: the nearest folder above this file that holds native/binding.gyp. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the clonecast project root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

let addon: NativeAddon | undefined;

/** The addon if it is built, else null (for code that has a JavaScript fallback). */
export function nativeIfBuilt(): NativeAddon | null {
  try {
    return native();
  } catch {
    return null;
  }
}

/** The loaded addon; throws NATIVE_UNAVAILABLE with the fix if it was not built. */
export function native(): NativeAddon {
  if (addon !== undefined) return addon;
  const file = join(projectRoot(), 'native', 'build', 'Release', 'clonecast_native.node');
  if (!existsSync(file)) {
    throw new ClonecastError(ERR.NATIVE_UNAVAILABLE, `the native raw-I/O module is not built (${file} is missing); run "npm ci" or "node native/build.mjs"`);
  }
  addon = createRequire(import.meta.url)(file) as NativeAddon;
  return addon;
}

// Hand the codecs the addon's xxh64 and liblz4 (protocol/ loads no addon itself): any program
// that loads this module, directly or through Disk or the store, hashes and compresses natively.
{
  const built = nativeIfBuilt();
  if (built !== null) {
    useNativeXxh64(built);
    useNativeMac(built);
    if (built.lz4Available()) useNativeLz4(built);
  }
}
