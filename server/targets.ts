/**
 * Which disk of a machine a session writes. The server chooses from the
 * disks the agent reported and refuses what cannot work (too small, in use,
 * ambiguous) for that machine alone; the agent checks the real device again
 * before it writes anything.
 */
import type { DiskInfo } from '../protocol/control.js';
import { formatBytes } from './progress.js';

/** The chosen device, or why there is none. */
export type DiskChoice = { device: string } | { error: string };

/**
 * Chooses by rule: "auto" takes the single non-removable disk that is not
 * the boot medium; a path takes that disk. The image must fit.
 */
export function chooseDisk(disks: DiskInfo[], rule: string, imageSize: number): DiskChoice {
  let disk: DiskInfo | undefined;
  if (rule === 'auto') {
    const candidates = disks.filter((d) => !d.removable && !d.boot);
    if (candidates.length === 0) {
      const seen = disks.map((d) => `${d.device}${d.boot ? ' (boot)' : ''}${d.removable ? ' (removable)' : ''}`).join(', ');
      return { error: `no disk to write: every disk is removable or the boot medium (${seen || 'no disks reported'}); deploy with --target DEVICE` };
    }
    if (candidates.length > 1) return { error: `more than one disk could be the target (${candidates.map((d) => d.device).join(', ')}); deploy with --target DEVICE` };
    disk = candidates[0];
  } else {
    disk = disks.find((d) => d.device === rule);
    if (disk === undefined) return { error: `it has no disk ${rule} (it has ${disks.map((d) => d.device).join(', ') || 'none'})` };
    if (disk.boot) return { error: `${rule} is the disk it booted from; clonecast does not overwrite it` };
  }
  if (disk.mounted) return { error: `${disk.device} is in use (mounted or held); unmount it or boot the machine from the network` };
  const size = Number(disk.size ?? 0);
  if (size < imageSize) return { error: `the image needs ${formatBytes(imageSize)} (${imageSize} bytes) but ${disk.device} holds ${formatBytes(size)} (${size} bytes); use a larger disk or a smaller image` };
  return { device: disk.device! };
}
