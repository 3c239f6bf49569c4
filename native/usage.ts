/**
 * Is a block device in use? Reads /proc/self/mountinfo, /proc/swaps and
 * /sys/dev/block to find mounts, swap and holders (device-mapper, md) of a
 * device or any of its partitions, and whether it is the disk the running
 * system's root filesystem lives on.
 */
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** A device number as "major:minor". */
export type DevId = string;

function devId(major: number, minor: number): DevId {
  return `${major}:${minor}`;
}

function readText(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The sysfs folder of a block device, or null if it has none. */
function sysDir(id: DevId): string | null {
  const link = `/sys/dev/block/${id}`;
  try {
    return realpathSync(link);
  } catch {
    return null;
  }
}

/** The whole disk a device belongs to (itself if it is not a partition). */
export function wholeDisk(id: DevId): DevId {
  const dir = sysDir(id);
  if (dir === null || !existsSync(join(dir, 'partition'))) return id;
  const parent = readText(join(dirname(dir), 'dev')).trim();
  return parent === '' ? id : parent;
}

/** A disk and its partitions: device ids with their kernel names. */
export function diskFamily(id: DevId): { id: DevId; name: string }[] {
  const disk = wholeDisk(id);
  const dir = sysDir(disk);
  if (dir === null) return [{ id, name: id }];
  const family = [{ id: disk, name: basename(dir) }];
  for (const entry of readdirSync(dir)) {
    if (existsSync(join(dir, entry, 'partition'))) {
      family.push({ id: readText(join(dir, entry, 'dev')).trim(), name: entry });
    }
  }
  return family;
}

interface Mount {
  id: DevId;
  mountPoint: string;
  source: string;
  writable: boolean;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mounts of this mount namespace (proc(5), /proc/PID/mountinfo). */
export function mounts(): Mount[] {
  const out: Mount[] = [];
  for (const line of readText('/proc/self/mountinfo').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    out.push({ id: left[2], mountPoint: unescape(left[4]), source: unescape(right[1] ?? ''), writable: /(^|,)rw(,|$)/.test(left[5]) });
  }
  return out;
}

/** Major and minor of a Linux dev_t: major in bits 8-19 and 32-43, minor in bits 0-7 and 20-43 (glibc's gnu_dev_major/minor). */
export function devNumbers(rdev: number | bigint): { major: number; minor: number } {
  const d = BigInt(rdev);
  return { major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)), minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)) };
}

function rdevOf(path: string): DevId | null {
  try {
    const st = statSync(path, { bigint: true });
    if (!st.isBlockDevice()) return null;
    const { major, minor } = devNumbers(st.rdev);
    return devId(major, minor);
  } catch {
    return null;
  }
}

/** Why a block device (major:minor) must not be overwritten; empty if it is free. */
export function deviceUsage(major: number, minor: number): { reasons: string[]; bootDisk: boolean } {
  const family = diskFamily(devId(major, minor));
  const ids = new Map(family.map((f) => [f.id, f.name]));
  const reasons: string[] = [];
  for (const m of mounts()) {
    const viaSource = m.source.startsWith('/dev/') ? rdevOf(m.source) : null;
    const hit = ids.get(m.id) ?? (viaSource !== null ? ids.get(viaSource) : undefined);
    if (hit !== undefined) reasons.push(`${hit} is mounted on ${m.mountPoint}${m.writable ? ' (read-write)' : ''}`);
  }
  for (const line of readText('/proc/swaps').split('\n').slice(1)) {
    const path = line.split(/\s+/)[0];
    const id = path ? rdevOf(path) : null;
    if (id !== null && ids.has(id)) reasons.push(`${ids.get(id)} is in use as swap`);
  }
  for (const f of family) {
    const dir = sysDir(f.id);
    if (dir === null) continue;
    let holders: string[] = [];
    try {
      holders = readdirSync(join(dir, 'holders'));
    } catch {
      // no holders folder: nothing stacked on it
    }
    if (holders.length > 0) reasons.push(`${f.name} is held by ${holders.join(', ')} (device-mapper, RAID or LVM)`);
  }
  const root = mounts().find((m) => m.mountPoint === '/');
  const rootDisk = root === undefined ? null : wholeDisk(root.id);
  const bootDisk = rootDisk !== null && ids.has(rootDisk);
  return { reasons: [...new Set(reasons)], bootDisk };
}
