/**
 * What the agent tells the server about its machine: MACs, hostname, boot
 * mode and disks, read from sysfs. Nothing here writes anything.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { BootMode, type DiskInfo } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { devNumbers, deviceUsage } from '../native/usage.js';

/** Block devices that are never a machine's disk. */
const NOT_DISKS = /^(loop|ram|zram|sr|fd|nbd|dm-|md)/;

function read(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Interfaces with an Ethernet MAC, in ifindex order: the first is the machine's id. */
export function macAddresses(): string[] {
  const found: { mac: string; index: number }[] = [];
  for (const name of readdirSync('/sys/class/net')) {
    const dir = join('/sys/class/net', name);
    if (read(join(dir, 'type')) !== '1') continue; // ARPHRD_ETHER
    const mac = read(join(dir, 'address')).toLowerCase();
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac) || mac === '00:00:00:00:00:00') continue;
    found.push({ mac, index: Number(read(join(dir, 'ifindex'))) });
  }
  return [...new Set(found.sort((a, b) => a.index - b.index).map((f) => f.mac))];
}

/** UEFI when the kernel was started by UEFI firmware. */
export function bootMode(): BootMode {
  return existsSync('/sys/firmware/efi') ? BootMode.BOOT_UEFI : BootMode.BOOT_BIOS;
}

/** Describes the block device at sysfs dir (a disk or a partition). */
function describeSys(device: string, sysDir: string): DiskInfo {
  const queue = existsSync(join(sysDir, 'queue')) ? join(sysDir, 'queue') : join(sysDir, '..', 'queue');
  const [maj, min] = read(join(sysDir, 'dev')).split(':').map(Number);
  const usage = deviceUsage(maj, min);
  const dev = join(sysDir, 'device');
  return {
    device,
    size: Number(read(join(sysDir, 'size'))) * 512, // always 512-byte units (include/linux/blk_types.h)
    logicalSector: Number(read(join(queue, 'logical_block_size'))) || 512,
    physicalSector: Number(read(join(queue, 'physical_block_size'))) || 512,
    model: read(join(dev, 'model')) || read(join(sysDir, 'loop', 'backing_file')),
    serial: read(join(dev, 'serial')) || read(join(sysDir, 'serial')) || read(join(dev, 'wwid')),
    removable: read(join(sysDir, 'removable')) === '1',
    mounted: usage.reasons.length > 0,
    boot: usage.bootDisk,
  };
}

/**
 * The disks to report. With a path, only that one (a block device, or a
 * regular file for demos and tests, reported with its current size);
 * otherwise every real disk in /sys/block.
 */
export function disks(only?: string): DiskInfo[] {
  if (only !== undefined && only !== 'auto') {
    let st;
    try {
      st = statSync(only);
    } catch {
      throw new ClonecastError(ERR.NOT_FOUND, `--disk ${only} does not exist; create it (a file: truncate -s SIZE ${only}) or name a block device`);
    }
    if (st.isFile()) {
      return [{ device: only, size: st.size, logicalSector: 512, physicalSector: 512, model: 'file', serial: '', removable: false, mounted: false, boot: false }];
    }
    if (!st.isBlockDevice()) throw new ClonecastError(ERR.USAGE, `--disk ${only} is neither a block device nor a file`);
    const { major, minor } = devNumbers(st.rdev);
    return [describeSys(only, realpathSync(`/sys/dev/block/${major}:${minor}`))];
  }
  const out: DiskInfo[] = [];
  for (const name of readdirSync('/sys/block').sort()) {
    if (NOT_DISKS.test(name)) continue;
    const info = describeSys(`/dev/${name}`, realpathSync(join('/sys/block', name)));
    if (info.size! > 0) out.push(info);
  }
  return out;
}

/** The machine as the Hello describes it. */
export function machine(disk?: string): { macs: string[]; hostname: string; bootMode: BootMode; disks: DiskInfo[] } {
  return { macs: macAddresses(), hostname: hostname(), bootMode: bootMode(), disks: disks(disk) };
}
