/**
 * Import of virtual disks (qcow2, vmdk, vhdx, vdi, vpc) with their backing
 * chains: the file is recognised by its header, its chain checked with
 * `qemu-img info` (native/qemu-img.ts), then served by `qemu-nbd --read-only`
 * on a private Unix socket and read with the NBD client, holes skipped by
 * block status. Nothing full-size is written anywhere. Raw files and block
 * devices take the usual path (no qemu-img needed).
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectChain, startQemuNbd, type ImageLayer, type QemuNbd, type VirtualFormat } from '../../native/qemu-img.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { NbdClient } from '../nbd/client.js';
import { importImage, type ImportOptions, type ImportSummary } from './import.js';
import { NbdChunkSource } from './import-source.js';
import type { Store } from './store.js';

/** Options of importAny(). */
export interface VirtualImportOptions extends ImportOptions {
  /** Follow backing files outside the top file's folder. */
  allowBackingOutside?: boolean;
}

/** What importAny() did: the import, and for a virtual disk its chain and what block status let it skip. */
export interface VirtualImportSummary extends ImportSummary {
  format: string;
  chain?: ImageLayer[];
  /** Bytes of chunks read over NBD (ranges block status called zero are not read). */
  bytesReadOverNbd?: number;
}

/** The virtual format a file's first bytes announce, or null (raw). */
export function sniffFormat(path: string): 'qcow2' | 'vmdk' | 'vhdx' | 'vdi' | 'vpc' | null {
  const fd = openSync(path, 'r');
  try {
    const size = statSync(path).size;
    const head = Buffer.alloc(512);
    const n = readSync(fd, head, 0, 512, 0);
    const h = head.subarray(0, n);
    if (h.length >= 4 && h.readUInt32BE(0) === 0x514649fb) return 'qcow2'; // "QFI\xfb"
    if (h.toString('latin1', 0, 4) === 'KDMV' || h.toString('latin1', 0, 21) === '# Disk DescriptorFile') return 'vmdk';
    if (h.toString('latin1', 0, 8) === 'vhdxfile') return 'vhdx';
    if (h.length >= 0x44 && h.readUInt32LE(0x40) === 0xbeda107f) return 'vdi';
    if (h.toString('latin1', 0, 8) === 'conectix') return 'vpc';
    // A fixed VHD has its footer only in its last 512 bytes.
    if (size >= 1024) {
      const tail = Buffer.alloc(8);
      readSync(fd, tail, 0, 8, size - 512);
      if (tail.toString('latin1') === 'conectix') return 'vpc';
    }
    return null;
  } finally {
    closeSync(fd);
  }
}

/** Imports src (raw file, block device, or virtual disk) as the next version of name. */
export async function importAny(store: Store, src: string, name: string, options: VirtualImportOptions = {}): Promise<VirtualImportSummary> {
  let st;
  try {
    st = statSync(src);
  } catch {
    st = undefined; // the usual path says what is wrong with src
  }
  const sniffed = st?.isFile() === true ? sniffFormat(src) : null;
  if (sniffed === null) return { ...(await importImage(store, src, name, options)), format: st?.isFile() === true ? 'raw' : 'block-device' };
  const chain = await inspectChain(src, options.allowBackingOutside === true);
  const top = chain[0];
  if (top.format === 'raw') return { ...(await importImage(store, src, name, options)), format: 'raw', chain };
  const served = await serveWithQemuNbd(top.path, top.format);
  try {
    const describe = chain.map((l) => `${l.path} (${l.format})`).join(' on ');
    const source = new NbdChunkSource(served.client, src, options.description ?? `imported from ${describe}`);
    const summary = await importImage(store, src, name, { ...options, source });
    return { ...summary, format: top.format, chain, bytesReadOverNbd: source.chunkBytesRead };
  } finally {
    await served.close();
  }
}

/**
 * Serves file with qemu-nbd in a private folder and connects to it. qemu-nbd
 * makes its socket before it opens the image, so a failure to open shows as
 * a refused connection: then qemu-nbd is stopped and what it printed is the
 * error. The folder is removed whatever happens.
 */
export async function serveWithQemuNbd(file: string, fmt: VirtualFormat): Promise<{ client: NbdClient; close(): Promise<void> }> {
  let dir: string | undefined;
  let nbd: QemuNbd | undefined;
  let client: NbdClient | undefined;
  const close = async () => {
    client?.close();
    await nbd?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  };
  try {
    dir = mkdtempSync(join(tmpdir(), 'clonecast-nbd-'));
    nbd = await startQemuNbd(file, fmt, join(dir, 'disk.sock'));
    try {
      client = await NbdClient.connectUnix(nbd.socket);
    } catch (err) {
      await nbd.stop();
      const said = nbd.stderr();
      if (said !== '') throw new ClonecastError(ERR.READ_ERROR, `qemu-nbd could not serve ${file} as ${fmt}: ${said}`, { path: file });
      throw err;
    }
    return { client, close };
  } catch (err) {
    await close();
    throw err;
  }
}
