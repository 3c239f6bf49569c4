/**
 * The system tools the agent's used-block capture runs (native/fs-tools.ts,
 * native/used-blocks.ts) and what they link: partclone for each filesystem
 * it maps, blkid, losetup, the filesystems' own cleanliness checks, and
 * mkswap for restoring swap. Copied into the boot environment's /sbin (on
 * its PATH), their libraries at the paths ldd gives.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Tools of used-block imaging, by name; each is looked up in the usual system folders. */
export const IMAGING_TOOLS = Object.freeze([
  'partclone.extfs', 'partclone.ntfs', 'partclone.fat', 'partclone.exfat', 'partclone.xfs', 'partclone.btrfs', 'partclone.f2fs', 'partclone.hfsp',
  'blkid', 'losetup', 'dumpe2fs', 'ntfscat', 'ntfsinfo', 'xfs_logprint', 'btrfs', 'mkswap',
]);

const FOLDERS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];

/** Where this system has each tool (tools it lacks are left out: the agent then reads those filesystems in full and says why). */
export function imagingTools(): { name: string; path: string }[] {
  return IMAGING_TOOLS.flatMap((name) => {
    const path = FOLDERS.map((d) => `${d}/${name}`).find((p) => existsSync(p));
    return path === undefined ? [] : [{ name, path }];
  });
}

/** Shared libraries a binary links, as ldd lists them (the loader included). */
export function linkedLibraries(binary: string): string[] {
  const r = spawnSync('ldd', [binary], { encoding: 'utf8' });
  const libs = new Set<string>();
  for (const line of (r.stdout ?? '').split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m !== null) libs.add(m[1]);
  }
  return [...libs];
}

/** Every library the imaging tools link, once. */
export function imagingLibraries(): string[] {
  return [...new Set(imagingTools().flatMap((t) => linkedLibraries(t.path)))];
}
