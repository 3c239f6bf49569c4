/**
 * `clonecast bootenv build`: what PXE hands a machine. The kernel comes from
 * Debian's kernel package (unpacked with dpkg-deb, never installed here);
 * the initramfs holds busybox (busybox-static), this Node and the shared
 * libraries it links, the agent (compiled code, the native addon, the
 * libraries the addon loads with dlopen and the production npm packages), every
 * wired network card and disk controller module of the kernel
 * (bootenv-modules.ts), and an init (bootenv-init.sh) that
 * brings up the network, starts the agent with the server URL and token
 * from the kernel command line, and reboots or powers off as the session
 * says. Everything comes from Debian and npm packages.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { projectRoot } from '../native/addon.js';
import { imagingLibraries, imagingTools } from './bootenv-tools.js';
import { FINISH_MODULES, finishTools } from './bootenv-finish-tools.js';
import { secureBootFiles, type SecureBootResult } from './secureboot-build.js';
import { trimIcu } from './bootenv-icu.js';
import { copyFirmware } from './bootenv-firmware.js';
import { copyModules } from './bootenv-modules.js';
import { copyPackages, packInitramfs, sizeReport, stripDebug, type SizePart } from './bootenv-pack.js';

/** Where a kernel package is looked for before one is downloaded (.ci/run puts one there). */
export const KERNEL_CACHE = process.env.CLONECAST_KERNEL_CACHE ?? '/var/cache/clonecast-test';

/** A linux-image-*-amd64 package already in dir, or null. */
export function cachedKernelPackage(dir: string = KERNEL_CACHE): string | null {
  if (!existsSync(dir)) return null;
  const deb = readdirSync(dir).find((f) => /^linux-image-\d.*-amd64_.*\.deb$/.test(f));
  return deb === undefined ? null : join(dir, deb);
}

/** What a build made. */
export interface BootEnv {
  kernel: string;
  initrd: string;
  kernelVersion: string;
  kernelBytes: number;
  initrdBytes: number;
  modules: string[];
  /** Debian's signed shim and GRUB beside the kernel, and the signature checks (pxe/secureboot.ts). */
  secureBoot: SecureBootResult;
  /** Uncompressed size of each part of the initramfs, biggest first. */
  parts: SizePart[];
  seconds: number;
}

/** Options of buildBootEnv(). */
export interface BootEnvOptions {
  out: string;
  /** A linux-image-*.deb; default: the cache, else apt-get download. */
  kernelDeb?: string;
  /** xz preset of the initramfs (DEFAULT_XZ_PRESET; tests take a faster one). */
  xzPreset?: string;
  log?: (message: string) => void;
}

function run(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error !== undefined || r.status !== 0) {
    throw new ClonecastError(ERR.NOT_FOUND, `${cmd} ${args.join(' ')} failed: ${r.error?.message ?? r.stderr.trim()}`);
  }
  return r.stdout;
}

/** The kernel package to use: given, cached, or downloaded with apt-get into cacheDir. */
export function kernelPackage(given: string | undefined, cacheDir: string, log?: (m: string) => void): string {
  if (given !== undefined) return given;
  const cached = cachedKernelPackage(cacheDir) ?? cachedKernelPackage();
  if (cached !== null) return cached;
  const dep = /Depends: (linux-image-\d\S*)/.exec(run('apt-cache', ['depends', 'linux-image-amd64']))?.[1];
  if (dep === undefined) throw new ClonecastError(ERR.NOT_FOUND, 'apt-cache knows no linux-image-amd64; run apt-get update, or pass --kernel-deb FILE');
  mkdirSync(cacheDir, { recursive: true });
  log?.(`downloading ${dep} (apt-get download; it is not installed)`);
  run('apt-get', ['download', '-qq', dep], cacheDir);
  return kernelPackage(undefined, cacheDir);
}

/** Shared libraries a binary links (ldd), with the loader. */
function sharedLibraries(binary: string): string[] {
  const out = run('ldd', [binary]);
  const libs = new Set<string>();
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m !== null) libs.add(m[1]);
  }
  return [...libs];
}

/** Libraries the native addon loads with dlopen (liblz4 and libzstd for chunks, ISA-L for parity, libhivex to name Windows machines). */
export const DLOPENED = Object.freeze(['liblz4.so.1', 'libzstd.so.1', 'libisal.so.2', 'libhivex.so.0']);

/** Where this system has each DLOPENED library (those it lacks are left out: the agent then says what to install). */
export function dlopenedLibraries(): string[] {
  return DLOPENED.flatMap((name) => ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu'].map((d) => join(d, name)).find((p) => existsSync(p)) ?? []);
}

/**
 * Programs of this system copied into the initramfs at the same path, each with
 * the shared libraries it links (ldd), as [path, Debian package]. Add a tool here.
 */
export const TOOLS: readonly (readonly [string, string])[] = Object.freeze([
  ['/bin/busybox', 'busybox-static'],
]);

function copyInto(root: string, file: string, strip = false): void {
  const to = join(root, file);
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(file, to);
  chmodSync(to, statSync(file).mode & 0o777);
  if (strip) stripDebug(to);
}

/** Builds vmlinuz and initrd.img into o.out. */
export function buildBootEnv(o: BootEnvOptions): BootEnv {
  const started = performance.now();
  const project = projectRoot();
  for (const [file, pkg] of [['/bin/busybox', 'busybox-static'], ['/usr/bin/cpio', 'cpio'], ['/usr/bin/dpkg-deb', 'dpkg'], ['/usr/bin/xz', 'xz-utils']] as const) {
    if (!existsSync(file)) throw new ClonecastError(ERR.NOT_FOUND, `bootenv build needs ${file}: apt-get install ${pkg}`);
  }
  if (spawnSync('/bin/busybox', ['udhcpc', '--help']).status === 127) throw new ClonecastError(ERR.NOT_FOUND, '/bin/busybox has no udhcpc: apt-get install busybox-static');
  const addon = join(project, 'native', 'build', 'Release', 'clonecast_native.node');
  if (!existsSync(addon) || !existsSync(join(project, 'dist', 'cli', 'main.js'))) throw new ClonecastError(ERR.NOT_FOUND, 'build clonecast first (npm ci)');
  mkdirSync(o.out, { recursive: true });
  const work = join(o.out, `.build-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const deb = kernelPackage(o.kernelDeb, join(o.out, 'cache'), o.log);
    o.log?.(`kernel from ${basename(deb)}`);
    const x = join(work, 'deb');
    run('dpkg-deb', ['-x', deb, x]);
    const version = readdirSync(join(x, 'lib', 'modules'))[0];
    const vmlinuz = readdirSync(join(x, 'boot')).find((f) => f.startsWith('vmlinuz-'))!;

    const root = join(work, 'root');
    for (const d of ['bin', 'sbin', 'usr/bin', 'proc', 'sys', 'dev', 'run', 'tmp', 'etc', 'lib/modules', 'opt']) mkdirSync(join(root, d), { recursive: true });
    // Node, the tools and what they link, at the same paths so the loader finds them, without
    // debug symbols (Node's alone are 12 MiB).
    const node = process.execPath;
    copyFileSync(node, join(root, 'usr/bin/node'));
    chmodSync(join(root, 'usr/bin/node'), 0o755);
    stripDebug(join(root, 'usr/bin/node'));
    const icu = trimIcu(join(root, 'usr/bin/node'), node);
    o.log?.(icu.trimmed ? `node: ICU data trimmed to the root and English locales (${icu.reason})` : `node: ICU data not trimmed: ${icu.reason}`);
    const libs = new Set(sharedLibraries(node));
    for (const [tool, pkg] of TOOLS) {
      if (!existsSync(tool)) throw new ClonecastError(ERR.NOT_FOUND, `bootenv build needs ${tool}: apt-get install ${pkg}`);
      copyInto(root, tool);
      if (tool !== '/bin/busybox') for (const lib of sharedLibraries(tool)) libs.add(lib); // busybox-static links nothing
    }
    for (const lib of libs) copyInto(root, lib, true);
    // Libraries the addon loads with dlopen (ldd cannot see them); without ISA-L the agent
    // decodes parity with the slower portable code.
    for (const lib of dlopenedLibraries()) copyInto(root, lib, true);
    // Used-block capture: partclone, blkid and the checks, on PATH in /sbin; their libraries where ldd found them.
    for (const t of imagingTools()) {
      copyFileSync(t.path, join(root, 'sbin', t.name));
      chmodSync(join(root, 'sbin', t.name), 0o755);
    }
    for (const lib of imagingLibraries()) copyInto(root, lib, true);
    // The tools that finish a disk after a verified write (swap, GPT, --grow-last), at their own paths.
    const tools = finishTools();
    if (tools.missing.length > 0) o.log?.(`without ${tools.missing.join(', ')}: agents cannot finish disks that need them`);
    for (const t of tools.found) {
      copyInto(root, t);
      for (const lib of sharedLibraries(t)) copyInto(root, lib, true);
    }
    // The agent: compiled code, addon, production packages.
    const app = join(root, 'opt', 'clonecast');
    mkdirSync(app, { recursive: true });
    for (const f of ['package.json', 'bin', 'dist']) cpSync(join(project, f), join(app, f), { recursive: true, filter: (src) => !src.endsWith('.map') && !src.includes(`${join('dist', 'test')}`) });
    mkdirSync(join(app, 'native', 'build', 'Release'), { recursive: true });
    copyFileSync(join(project, 'native', 'binding.gyp'), join(app, 'native', 'binding.gyp'));
    copyFileSync(addon, join(app, 'native', 'build', 'Release', 'clonecast_native.node'));
    copyPackages(project, app);
    // Every wired network and disk controller driver, loaded at boot by the devices' modaliases,
    // and the modules the finishing steps load by name (loop devices, XFS and btrfs mounts).
    const modules = copyModules(x, root, version, FINISH_MODULES);
    o.log?.(`${modules.names.length} kernel modules (${(modules.bytes / 1048576).toFixed(1)} MiB)`);
    const firmware = copyFirmware(modules.files, root);
    const lacking = ['r8169', 'r8152', 'tg3', 'bnx2', 'bnx2x', 'e100', 'isci'].filter((m) => firmware.missing.has(m));
    o.log?.(`firmware: ${firmware.copied.length} file(s) from /lib/firmware${lacking.length > 0 ? `; this system lacks the firmware some variants of ${lacking.join(', ')} need (docs/pxe.md)` : ''}`);
    // init and the DHCP client's script.
    const init = readFileSync(join(project, 'pxe', 'bootenv-init.sh'), 'utf8');
    writeFileSync(join(root, 'init'), init);
    chmodSync(join(root, 'init'), 0o755);
    writeFileSync(join(root, 'etc', 'udhcpc.script'), UDHCPC_SCRIPT);
    chmodSync(join(root, 'etc', 'udhcpc.script'), 0o755);
    writeFileSync(join(root, 'etc', 'clonecast-bootenv'), `kernel ${version}\nnode ${process.version}\nbuilt ${new Date().toISOString()}\n`);

    const kernel = join(o.out, 'vmlinuz');
    const initrd = join(o.out, 'initrd.img');
    // A running serve reads both from here at every boot: each new file appears only by rename
    // (a copy over the old kernel would rewrite the inode it serves), the two one after the other
    // once both are complete, so a boot never pairs a new kernel with an old initramfs's modules.
    const kernelNew = join(work, 'vmlinuz');
    const initrdNew = join(work, 'initrd.img');
    copyFileSync(join(x, 'boot', vmlinuz), kernelNew);
    const secureBoot = secureBootFiles({ out: o.out, kernel: kernelNew, modulesDir: join(root, 'lib', 'modules'), cacheDir: join(o.out, 'cache'), sharedCache: KERNEL_CACHE, work, log: o.log });
    const parts = sizeReport(root, version);
    o.log?.('compressing the initramfs (xz)');
    packInitramfs(root, initrdNew, o.xzPreset);
    renameSync(kernelNew, kernel);
    renameSync(initrdNew, initrd);
    return {
      kernel,
      initrd,
      kernelVersion: version,
      kernelBytes: statSync(kernel).size,
      initrdBytes: statSync(initrd).size,
      modules: modules.names,
      secureBoot,
      parts,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** busybox udhcpc's event script: configure the address, the route, and the multicast route. */
const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "\${router%% *}" dev "$interface" 2>/dev/null
    ip route add 239.0.0.0/8 dev "$interface" 2>/dev/null
    echo "$ip" > /run/clonecast-ip ;;
esac
exit 0
`;
