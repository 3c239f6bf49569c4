/**
 * Disk: raw positional I/O on a block device or an image file through the
 * native addon, with O_DIRECT where alignment allows and a buffered
 * descriptor for unaligned heads and tails.
 *
 * Opening for writing refuses a device that is mounted, holds a mounted
 * partition, is swap or stacked under device-mapper/RAID, or carries the
 * running system's root filesystem, unless `force` is set.
 */
import { closeSync, ftruncateSync, openSync, readSync, statSync, writeSync, constants as fsc, type Stats } from 'node:fs';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { native, type DeviceInfo, type NativeAddon } from './addon.js';
import { devNumbers, deviceUsage } from './usage.js';

/** How to open a disk. */
export interface DiskOptions {
  /** Open for writing (default false). */
  write?: boolean;
  /** Skip the mounted/boot-disk safety checks (default false). */
  force?: boolean;
  /** Use O_DIRECT where the filesystem allows it (default true). */
  direct?: boolean;
  /** Create the regular file with this size if it does not exist (write only). */
  createSize?: number;
}

/** Buffers handed to O_DIRECT are aligned to at least this (a page). */
export const DEFAULT_ALIGNMENT = 4096;

/** An open disk or image file. */
export class Disk {
  /** Size in bytes. */
  readonly size: number;
  /** Logical sector size (the unit of I/O the device accepts). */
  readonly logicalSectorSize: number;
  /** Physical sector size (the unit the device writes internally). */
  readonly physicalSectorSize: number;
  /** True for a block device, false for a regular file. */
  readonly blockDevice: boolean;
  /** True if the main descriptor uses O_DIRECT. */
  readonly direct: boolean;
  /** Alignment required of O_DIRECT offsets, lengths and buffer addresses. */
  readonly alignment: number;
  private buffered: number | undefined;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly addon: NativeAddon,
    info: DeviceInfo,
    private readonly writable: boolean,
  ) {
    this.size = info.size;
    this.logicalSectorSize = info.logicalSectorSize;
    this.physicalSectorSize = info.physicalSectorSize;
    this.blockDevice = info.blockDevice;
    this.direct = info.direct;
    // Regular files: the filesystem block size is the safe O_DIRECT unit.
    this.alignment = info.blockDevice ? info.logicalSectorSize : Math.max(info.physicalSectorSize, 512);
  }

  /** Opens path; see DiskOptions. Throws DISK_IN_USE or BOOT_DISK for a device in use. */
  static open(path: string, options: DiskOptions = {}): Disk {
    const addon = native();
    const write = options.write ?? false;
    if (write && options.createSize !== undefined) {
      const fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT, 0o644);
      try {
        const { size, blockDevice } = addon.deviceInfo(fd);
        if (!blockDevice && size === 0) {
          // ftruncate makes a sparse file of the wanted size.
          ftruncateSync(fd, options.createSize);
        }
      } finally {
        closeSync(fd);
      }
    }
    if (write && !options.force) {
      // Check before opening: a device in use is never opened for writing.
      let st: Stats | undefined;
      try {
        st = statSync(path);
      } catch {
        // missing: open() below reports it
      }
      if (st?.isBlockDevice()) {
        const { major, minor } = devNumbers(st.rdev);
        checkUnused(path, major, minor);
      }
    }
    let fd: number;
    try {
      fd = addon.open(path, write, options.direct ?? true);
    } catch (err) {
      // tmpfs and some filesystems refuse O_DIRECT: fall back to buffered I/O.
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL' || options.direct === false) throw openError(err, path);
      fd = addon.open(path, write, false);
    }
    let info: DeviceInfo;
    try {
      info = addon.deviceInfo(fd);
    } catch (err) {
      addon.close(fd);
      if ((err as NodeJS.ErrnoException).code === 'ENOTBLK') {
        throw new ClonecastError(ERR.USAGE, `${path} is neither a block device nor a regular file`);
      }
      throw err;
    }
    return new Disk(path, fd, addon, info, write);
  }

  /** Allocates a zeroed buffer aligned for this disk's O_DIRECT I/O. */
  allocate(size: number): Buffer {
    return this.addon.alignedBuffer(Math.max(size, 1), Math.max(this.alignment, DEFAULT_ALIGNMENT));
  }

  /**
   * Reads length bytes at position into buf (from offset 0). Returns the
   * number read, short only at the end of the disk.
   */
  async read(buf: Buffer, position: number, length = buf.length): Promise<number> {
    this.check(position, length, buf.length);
    const end = Math.min(position + length, this.size);
    return this.transfer('read', buf, position, Math.max(0, end - position));
  }

  /** Writes all of buf at position. */
  async write(buf: Buffer, position: number, length = buf.length): Promise<void> {
    this.check(position, length, buf.length);
    if (!this.writable) throw new ClonecastError(ERR.USAGE, `${this.path} was opened read-only`);
    if (this.blockDevice && position + length > this.size) {
      throw new ClonecastError(ERR.WRITE_ERROR, `write of ${length} bytes at ${position} runs past the end of ${this.path} (${this.size} bytes)`);
    }
    await this.transfer('write', buf, position, length);
  }

  /**
   * Blocking read for worker threads, where waiting is cheaper than a hop
   * through the shared thread pool. Same contract as read().
   */
  readSync(buf: Buffer, position: number, length = buf.length): number {
    this.check(position, length, buf.length);
    const end = Math.min(position + length, this.size);
    return this.transferSync('read', buf, position, Math.max(0, end - position));
  }

  /** Blocking write for worker threads. Same contract as write(). */
  writeSync(buf: Buffer, position: number, length = buf.length): void {
    this.check(position, length, buf.length);
    if (!this.writable) throw new ClonecastError(ERR.USAGE, `${this.path} was opened read-only`);
    if (this.blockDevice && position + length > this.size) {
      throw new ClonecastError(ERR.WRITE_ERROR, `write of ${length} bytes at ${position} runs past the end of ${this.path} (${this.size} bytes)`);
    }
    this.transferSync('write', buf, position, length);
  }

  // Splits a transfer into an O_DIRECT body (aligned position, address and
  // length) and a buffered remainder.
  private split(buf: Buffer, position: number, length: number): number {
    const a = this.alignment;
    const aligned = this.direct && position % a === 0 && this.addon.isAligned(buf, a);
    return aligned ? length - (length % a) : 0;
  }

  private async transfer(op: 'read' | 'write', buf: Buffer, position: number, length: number): Promise<number> {
    const body = this.split(buf, position, length);
    let done = 0;
    if (body > 0) done = await this.addon[op](this.fd, buf, 0, body, position);
    if (body < length && done === body) {
      done += await this.addon[op](this.bufferedFd(), buf, body, length - body, position + body);
    }
    return done;
  }

  private transferSync(op: 'read' | 'write', buf: Buffer, position: number, length: number): number {
    const body = this.split(buf, position, length);
    const io = op === 'read' ? fullReadSync : fullWriteSync;
    let done = 0;
    if (body > 0) done = io(this.fd, buf, 0, body, position);
    if (body < length && done === body) done += io(this.bufferedFd(), buf, body, length - body, position + body);
    return done;
  }

  /**
   * True if [position, position+length) is a hole of a sparse file: it reads
   * as zeros and need not be read at all. Always false for block devices.
   */
  isHole(position: number, length: number): boolean {
    if (this.blockDevice) return false;
    try {
      const next = this.addon.seekData(this.fd, position);
      return next < 0 || next >= position + length;
    } catch {
      return false; // a filesystem without SEEK_DATA: read it
    }
  }

  /** Makes a range read as zeros: BLKZEROOUT on devices, a punched hole in files. */
  async zeroRange(position: number, length: number): Promise<void> {
    this.check(position, length, length);
    try {
      await this.addon.zeroRange(this.fd, position, length);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EOPNOTSUPP' && code !== 'EINVAL' && code !== 'ENOTTY') throw err;
      // No zeroing support here: write zeros.
      const zeros = this.allocate(Math.min(length, 4 << 20));
      for (let off = 0; off < length; off += zeros.length) {
        await this.write(zeros, position + off, Math.min(zeros.length, length - off));
      }
    }
  }

  /** Discards a range (BLKDISCARD, or a punched hole in a file). Contents afterwards are unspecified on devices. */
  async discard(position: number, length: number): Promise<void> {
    this.check(position, length, length);
    await this.addon.discard(this.fd, position, length);
  }

  /** fdatasync on every descriptor this disk uses. */
  async flush(): Promise<void> {
    await this.addon.flush(this.fd);
    if (this.buffered !== undefined) await this.addon.flush(this.buffered);
  }

  /** Asks the kernel to re-read the partition table (BLKRRPART); devices only. */
  async rereadPartitions(): Promise<void> {
    if (this.blockDevice) await this.addon.rereadPartitions(this.fd);
  }

  /** Closes the descriptors. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.addon.close(this.fd);
    if (this.buffered !== undefined) this.addon.close(this.buffered);
  }

  private bufferedFd(): number {
    this.buffered ??= this.addon.open(this.path, this.writable, false);
    return this.buffered;
  }

  private check(position: number, length: number, bufLength: number): void {
    if (this.closed) throw new ClonecastError(ERR.USAGE, `${this.path} is closed`);
    if (!Number.isSafeInteger(position) || position < 0) throw new RangeError('position must be a non-negative integer');
    if (!Number.isSafeInteger(length) || length < 0 || length > bufLength) throw new RangeError('length must be a non-negative integer no larger than the buffer');
  }
}

// pread until length or end of file.
function fullReadSync(fd: number, buf: Buffer, offset: number, length: number, position: number): number {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, offset + done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

// pwrite until all of length is written.
function fullWriteSync(fd: number, buf: Buffer, offset: number, length: number, position: number): number {
  let done = 0;
  while (done < length) done += writeSync(fd, buf, offset + done, length - done, position + done);
  return done;
}

function openError(err: unknown, path: string): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new ClonecastError(ERR.NOT_FOUND, `${path} does not exist`, {}, { cause: err });
  if (code === 'EACCES' || code === 'EPERM') {
    return new ClonecastError(ERR.USAGE, `no permission to open ${path}; raw disk access needs root`, {}, { cause: err });
  }
  if (code === 'EBUSY') return new ClonecastError(ERR.DISK_IN_USE, `${path} is busy (opened exclusively by another program)`, {}, { cause: err });
  return err;
}

function checkUnused(path: string, maj: number, min: number): void {
  const usage = deviceUsage(maj, min);
  if (usage.bootDisk) {
    throw new ClonecastError(
      ERR.BOOT_DISK,
      `refusing to write ${path}: it holds the running system's root filesystem; pick another disk, or pass --force if you really mean it`,
      { path },
    );
  }
  if (usage.reasons.length > 0) {
    throw new ClonecastError(
      ERR.DISK_IN_USE,
      `refusing to write ${path}: ${usage.reasons.join('; ')}. Unmount it (and stop what holds it) first, or pass --force`,
      { path, reasons: usage.reasons },
    );
  }
}
