/**
 * What the PXE tests boot: Debian's kernel (from the linux-image package,
 * downloaded by .ci/run with apt-get download, not installed) and a tiny
 * busybox initramfs whose /init prints a marker and the kernel command line
 * on the serial console, then powers off.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cachedKernelPackage, KERNEL_CACHE } from '../../pxe/bootenv.js';

export const MARKER = 'CLONECAST-TEST-BOOT-OK';

/** Writes vmlinuz and initrd.img into dir. */
export function makeBootFiles(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const deb = cachedKernelPackage();
  if (deb === null) throw new Error(`no kernel package in ${KERNEL_CACHE}: apt-get download linux-image-<version>-amd64 there (.ci/run does)`);
  const x = join(dir, 'x');
  execFileSync('dpkg-deb', ['-x', deb, x]);
  const vmlinuz = readdirSync(join(x, 'boot')).find((f) => f.startsWith('vmlinuz-'))!;
  copyFileSync(join(x, 'boot', vmlinuz), join(dir, 'vmlinuz'));
  spawnSync('rm', ['-rf', x]);
  const root = join(dir, 'initramfs');
  mkdirSync(join(root, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
  writeFileSync(
    join(root, 'init'),
    `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
echo "${MARKER} cmdline: $(/bin/busybox cat /proc/cmdline)" > /dev/ttyS0
/bin/busybox poweroff -f
`,
  );
  chmodSync(join(root, 'init'), 0o755);
  execFileSync('sh', ['-c', `cd ${root} && find . | cpio -o -H newc --quiet | gzip -1 > ${join(dir, 'initrd.img')}`]);
}
