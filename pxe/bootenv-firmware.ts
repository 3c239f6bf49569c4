/**
 * Firmware for the boot environment's drivers: the files the selected
 * modules name (their modinfo firmware= fields) that this system has under
 * /lib/firmware, copied to the same place in the initramfs, where the kernel's
 * loader finds them. Debian's firmware-linux-free (main) holds a few (Intel's
 * isci SAS controller); the non-free ones (firmware-realtek, firmware-bnx2,
 * firmware-misc-nonfree...) are used when the site installs them.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** Firmware files a module may ask for (the firmware= fields of its .modinfo section). */
export function moduleFirmware(file: string): string[] {
  return [...readFileSync(file, 'latin1').matchAll(/(?:^|\0)firmware=([^\0]+)\0/g)].map((m) => m[1]);
}

/** What copyFirmware() found. */
export interface FirmwareSet {
  copied: string[];
  /** Module name → the firmware files it names that this system lacks. */
  missing: Map<string, string[]>;
  bytes: number;
}

/** Copies the firmware the modules (name → path) name from `from` into root/lib/firmware. */
export function copyFirmware(modules: Map<string, string>, root: string, from = '/lib/firmware'): FirmwareSet {
  const set: FirmwareSet = { copied: [], missing: new Map(), bytes: 0 };
  for (const [name, file] of modules) {
    for (const fw of moduleFirmware(file)) {
      if (fw.includes('..') || fw.startsWith('/')) continue; // a name, never a path out
      const src = [join(from, fw), join(from, `${fw}.xz`)].find((p) => existsSync(p)); // CONFIG_FW_LOADER_COMPRESS_XZ
      if (src === undefined) {
        set.missing.set(name, [...(set.missing.get(name) ?? []), fw]);
        continue;
      }
      const to = join(root, 'lib', 'firmware', src.slice(from.length + 1));
      if (existsSync(to)) continue;
      mkdirSync(dirname(to), { recursive: true });
      copyFileSync(src, to);
      set.copied.push(fw);
      set.bytes += statSync(to).size;
    }
  }
  return set;
}
