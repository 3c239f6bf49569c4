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
import { useNativeZstd } from '../protocol/zstd.js';

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
  /** True if libzstd.so.1 loaded (dlopen on first call). */
  zstdAvailable(): boolean;
  /** One zstd frame of src at level into dst; its length, or 0 if it does not fit. */
  zstdCompress(src: Buffer, dst: Buffer, level: number): number;
  /** Decodes exactly one frame declaring dst.length bytes; dst.length, or -1 if it does not. */
  zstdDecompress(src: Buffer, dst: Buffer): number;
  udpSocket(device: string, address: string, port: number): number;
  macKey(key: Buffer): Buffer;
  macSign(state: Buffer, packet: Buffer, length: number): void;
  macVerify(state: Buffer, packet: Buffer, length: number): boolean;
  /** Batched UDP (native/src/udp_batch.c; transfer/batch-socket.ts wraps it). */
  udpbOpen(): UdpBatchHandle;
  udpbBind(h: UdpBatchHandle, address: string, port: number): number;
  /** option: 0 SO_RCVBUF, 1 SO_SNDBUF, 2 IP_MULTICAST_TTL, 3 IP_MULTICAST_LOOP. */
  udpbSetInt(h: UdpBatchHandle, option: number, value: number): void;
  udpbMulticastInterface(h: UdpBatchHandle, address: string): void;
  udpbMembership(h: UdpBatchHandle, group: string, iface: string): void;
  /** 0, or the errno of a send that failed. */
  udpbSend(h: UdpBatchHandle, buffer: Buffer, offset: number, length: number, port: number, address: string): number;
  /** meta: offset, length, IPv4 address (host order), port per packet; returns the packets sent. */
  udpbSendBatch(h: UdpBatchHandle, buffer: Buffer, meta: Uint32Array, count: number, macState: Buffer | null): number;
  udpbGso(h: UdpBatchHandle): boolean;
  udpbRecvStart(h: UdpBatchHandle, callback: (count: number) => void, data: Buffer, slotSize: number, meta: Uint32Array): void;
  /** types: bit t set = check the MAC of datagrams of type t under macState. */
  udpbSetVerify(h: UdpBatchHandle, macState: Buffer | null, types: number): void;
  udpbClose(h: UdpBatchHandle): void;
  /** ISA-L (libisal.so.2) was loaded for the parity code; otherwise the portable code runs. */
  fecIsal(): boolean;
  /** Reed-Solomon parity (native/src/fec.c): the parity fragments of indexes parity of k data fragments of len bytes; mode 1 forces the portable code. */
  fecEncode(k: number, len: number, data: Buffer, parity: Buffer, out: Buffer, mode: number): void;
  /** Rebuilds the data fragments want from k received fragments whose rows are rows (< k data, k + p parity p); false if the rows are not invertible. */
  fecDecode(k: number, len: number, have: Buffer, rows: Buffer, want: Buffer, out: Buffer, mode: number): boolean;
  /** True if libhivex.so.0 loads (Windows registry hives). */
  hiveAvailable(): boolean;
  /** A value of a hive: [type, raw bytes], or null if the key or value is absent. */
  hiveGet(file: string, key: string, name: string): [number, Buffer] | null;
  /** Sets values (making missing keys) and commits once; throws, leaving the file as it was, on any failure. */
  hiveSet(file: string, edits: [key: string, name: string, type: number, data: Buffer][]): void;
}

/** An open batched UDP socket of the addon (opaque). */
export interface UdpBatchHandle {
  readonly udpBatchHandle: never;
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

// Hand the codecs the addon's xxh64, liblz4 and libzstd (protocol/ loads no addon itself): any program
// that loads this module, directly or through Disk or the store, hashes and compresses natively.
{
  const built = nativeIfBuilt();
  if (built !== null) {
    useNativeXxh64(built);
    useNativeMac(built);
    if (built.lz4Available()) useNativeLz4(built);
    if (typeof built.zstdAvailable === 'function' && built.zstdAvailable()) useNativeZstd(built);
  }
}
