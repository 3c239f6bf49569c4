/**
 * Export to virtual formats: `qemu-img convert` reads the version through a
 * private NBD export (server/nbd/) on a Unix socket, so holes stay holes and
 * qemu writes the format. With a backing file (an earlier export of version
 * U), the export is a difference: block status calls every chunk that is the
 * same in U a hole that is not zero, and `qemu-img convert -B` leaves those
 * to the backing file: the overlay holds only what changed.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { parseInfo, qemuImg, requireTool, type VirtualFormat } from '../../native/qemu-img.js';
import { nbdUnixUri } from '../nbd/howto.js';
import { NbdServer } from '../nbd/server.js';
import { exportImage, type ExportOptions } from './export.js';
import type { ImageRef, Store } from './store.js';

/** Formats qemu-img can compress (-c). */
const COMPRESSIBLE: readonly VirtualFormat[] = ['qcow2', 'vmdk'];

/** Options of exportVirtual(). */
export interface VirtualExportOptions extends ExportOptions {
  format: VirtualFormat;
  compress?: boolean;
  /** An overlay over FILE, an earlier export of version ref, in format (default: what qemu-img sees, then checked). */
  backing?: { ref: ImageRef; file: string; format?: VirtualFormat };
}

/** What exportVirtual() did. */
export interface VirtualExportSummary {
  name: string;
  version: number;
  target: string;
  format: VirtualFormat;
  diskSize: number;
  /** Bytes the file takes on disk. */
  fileBytes: number;
  /** Bytes of chunks the NBD export decoded for qemu-img (null on the direct raw path). */
  bytesDecoded: number | null;
  backing: string | null;
  seconds: number;
}

/** Writes version ref to dest in a virtual format. */
export async function exportVirtual(store: Store, ref: ImageRef, dest: string, options: VirtualExportOptions): Promise<VirtualExportSummary> {
  const started = performance.now();
  const { format } = options;
  if (options.compress === true && !COMPRESSIBLE.includes(format)) {
    throw new ClonecastError(ERR.USAGE, `--compress works with qcow2 and vmdk only, not ${format}; leave it out`);
  }
  if (options.backing !== undefined && format !== 'qcow2') throw new ClonecastError(ERR.USAGE, `--backing makes a qcow2 overlay; use --format qcow2 (not ${format})`);
  if (format === 'raw' && options.backing === undefined) {
    // The direct path: sparse file or block device, checked chunk by chunk.
    const s = await exportImage(store, ref, dest, options);
    return { name: s.name, version: s.version, target: dest, format, diskSize: s.diskSize, fileBytes: allocated(dest), bytesDecoded: null, backing: null, seconds: s.seconds };
  }
  requireTool('qemu-img');
  refuseExisting(dest, options.force === true);
  const server = new NbdServer(store);
  const dir = mkdtempSync(join(tmpdir(), 'clonecast-nbd-'));
  try {
    let backingName: string | null = null;
    let backingFormat: VirtualFormat | undefined;
    const e = await server.add(ref, 'export', options.backing?.ref);
    const socket = join(dir, 'export.sock');
    if (options.backing !== undefined) {
      await server.add(options.backing.ref, 'backing');
      await server.listenUnix(socket);
      const file = resolve(options.backing.file);
      backingFormat = await checkBacking(store, options.backing.ref, file, options.backing.format, nbdUnixUri(socket, 'backing'));
      // Stored relative to the overlay, so the pair can move together.
      backingName = relative(dirname(resolve(dest)), file);
    } else await server.listenUnix(socket);
    // -f raw: the disk's own bytes are never probed as an image format (a stored disk may begin with a qcow2 header naming host files).
    const args = ['convert', '-f', 'raw', '-O', format];
    if (options.compress === true) args.push('-c');
    // VHD rounds its size to a disk geometry unless told to keep it exact.
    if (format === 'vpc') args.push('-o', 'force_size=on');
    if (backingName !== null) args.push('-B', backingName, '-F', backingFormat!);
    args.push(nbdUnixUri(socket, 'export'), dest);
    await qemuImg(args);
    const seconds = (performance.now() - started) / 1000;
    const m = e.source.manifest.meta;
    return { name: m.name, version: m.version, target: dest, format, diskSize: m.diskSize, fileBytes: allocated(dest), bytesDecoded: e.source.stats.bytesDecoded, backing: backingName, seconds };
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The format every later reader will open FILE as, once FILE is known to be
 * version base: read in that format it names no file of its own (backing
 * file, data file, extent) and `qemu-img compare` finds it identical to the
 * stored version. A raw export of a disk that begins with a qcow2 header is
 * probed as qcow2; recording that would send every reader of the overlay to
 * the files the header names.
 */
async function checkBacking(store: Store, base: ImageRef, file: string, given: VirtualFormat | undefined, baseUri: string): Promise<VirtualFormat> {
  const b = store.resolve(base);
  const label = `${b.name}@${b.version}`;
  const again = `export ${label} again (e.g. --format raw) and use that file, naming its format: --backing ${label}=FILE:raw`;
  const infoArgs = ['info', '--output=json', ...(given !== undefined ? ['-f', given] : []), file];
  const info = parseInfo(await qemuImg(infoArgs), file);
  if (info.backing !== null || info.files.length > 0) {
    throw new ClonecastError(ERR.REFUSED, `${file} read as ${info.format} names other files (${[info.backing, ...info.files].filter((f) => f !== null).join(', ')}): an export of ${label} names none; ${again}`);
  }
  const baseSize = (await store.readManifest(b.name, b.version)).meta.diskSize;
  if (info.virtualSize !== baseSize) {
    throw new ClonecastError(ERR.USAGE, `${file} is ${info.virtualSize} bytes but ${label} is ${baseSize}: it is not an export of that version; ${again}`);
  }
  try {
    await qemuImg(['compare', '-q', '-f', info.format, '-F', 'raw', file, baseUri]);
  } catch {
    throw new ClonecastError(ERR.REFUSED, `${file} read as ${info.format} is not the same disk as ${label}: it is not an export of that version; ${again}`);
  }
  return info.format;
}

function allocated(path: string): number {
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

function refuseExisting(dest: string, force: boolean): void {
  let st;
  try {
    st = statSync(dest);
  } catch {
    return;
  }
  if (!st.isFile()) throw new ClonecastError(ERR.REFUSED, `${dest} is not a regular file: a virtual disk is written to a file (use --format raw to write a block device)`);
  if (st.size > 0 && !force) throw new ClonecastError(ERR.REFUSED, `refusing to overwrite ${dest}: it is a file of ${st.size} bytes; add --force to replace it, or export to a new path`, { path: dest });
}
