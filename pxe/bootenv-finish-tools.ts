/**
 * The system tools the boot environment carries for the steps after a
 * verified write (native/disk-finish.ts: sfdisk, mkswap, resize2fs,
 * ntfsresize, xfs_growfs, btrfs, ...), at their paths on this system, with
 * the libraries ldd lists; and the kernel modules those steps need (loop
 * devices, and XFS and btrfs for their temporary mounts).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { FINISH_TOOLS } from '../native/disk-finish.js';

/** Kernel modules for finishing a disk: loop devices over partitions, XFS and btrfs mounts (their dependencies are added). */
export const FINISH_MODULES = Object.freeze(['loop', 'xfs', 'btrfs']);

/** Debian packages of the tools, for the message when one is missing. */
const PACKAGE = Object.freeze<Record<string, string>>({
  sfdisk: 'fdisk', losetup: 'mount', mount: 'mount', umount: 'mount', blkid: 'util-linux', mkswap: 'util-linux',
  e2fsck: 'e2fsprogs', resize2fs: 'e2fsprogs', ntfsresize: 'ntfs-3g', xfs_growfs: 'xfsprogs', btrfs: 'btrfs-progs',
});

/** Where this system has each tool, and the ones it lacks (with the package to install). */
export function finishTools(): { found: string[]; missing: string[] } {
  const found: string[] = [];
  const missing: string[] = [];
  for (const t of FINISH_TOOLS) {
    const path = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'].map((d) => join(d, t)).find((p) => existsSync(p));
    if (path === undefined) missing.push(`${t} (apt-get install ${PACKAGE[t]})`);
    else found.push(path);
  }
  return { found, missing };
}
