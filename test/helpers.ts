/**
 * Test helpers: temporary folders, capability checks that skip on a laptop
 * but fail in CI (CLONECAST_REQUIRE_ALL=1), running the CLI, loop devices.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash, X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { it, afterAll } from 'vitest';
import { WebSocket, type ClientOptions } from 'ws';
import { cachedKernelPackage, KERNEL_CACHE } from '../pxe/bootenv.js';
import { nativeIfBuilt } from '../native/addon.js';
import { pinnedFetch, pinnedWebSocketOptions, wssUrl, type PinnedInit, type PinnedResponse } from '../native/pinned-tls.js';

/** Repository root. */
export const ROOT = resolve(import.meta.dirname, '..');
/** The CLI entry point. */
export const CLI = join(ROOT, 'bin', 'clonecast');

const made: string[] = [];
// Registered once per test file, at import: a tempDir() made inside a test is removed too
// (an afterAll registered from inside a running test is never called).
afterAll(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A temporary folder removed after the file's tests. */
export function tempDir(tag = 'cc'): string {
  const dir = mkdtempSync(join(process.env.CLONECAST_TEST_TMP ?? tmpdir(), `clonecast-${tag}-`));
  made.push(dir);
  return dir;
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

/** Things a test may need from the machine, each with the reason it is missing. */
const CAPABILITIES: Record<string, () => string | null> = {
  root: () => (process.getuid?.() === 0 ? null : 'needs root'),
  isal: () => (['/lib/x86_64-linux-gnu/libisal.so.2', '/usr/lib/x86_64-linux-gnu/libisal.so.2'].some((p) => existsSync(p)) ? null : 'needs ISA-L (apt-get install libisal2)'),
  loop: () => (process.getuid?.() === 0 && existsSync('/dev/loop-control') && hasCommand('losetup') ? null : 'needs root and loop devices (losetup)'),
  naming: () =>
    ['debugfs', 'mkntfs', 'ntfs-3g', 'ntfscat', 'ntfscp', 'ntfsfix', 'hivexsh', 'hivexget', 'sgdisk'].every(hasCommand) && existsSync('/dev/fuse')
      ? null
      : 'needs e2fsprogs, ntfs-3g (with /dev/fuse), libhivex-bin and gdisk (apt-get install e2fsprogs ntfs-3g libhivex-bin gdisk)',
  mkfs: () => (hasCommand('mkfs.ext4') ? null : 'needs mkfs.ext4 (e2fsprogs)'),
  sfdisk: () => (hasCommand('sfdisk') ? null : 'needs sfdisk (fdisk package)'),
  sgdisk: () => (hasCommand('sgdisk') ? null : 'needs sgdisk (gdisk package)'),
  partclone: () => (hasCommand('partclone.extfs') && hasCommand('blkid') ? null : 'needs partclone and blkid (apt-get install partclone util-linux)'),
  fstools: () => {
    const tools = ['mkntfs', 'ntfs-3g', 'mkfs.vfat', 'mcopy', 'mkfs.exfat', 'mount.exfat-fuse', 'mkfs.xfs', 'mkfs.btrfs'].filter((t) => !hasCommand(t));
    return tools.length === 0 ? null : `needs ${tools.join(', ')} (apt-get install ntfs-3g dosfstools mtools exfatprogs exfat-fuse xfsprogs btrfs-progs)`;
  },
  vfat: () => (hasCommand('mkfs.vfat') && hasCommand('mcopy') ? null : 'needs mkfs.vfat and mcopy (apt-get install dosfstools mtools)'),
  netns: () => {
    if (process.getuid?.() !== 0) return 'needs root for network namespaces';
    const probe = `ccprobe${process.pid}`;
    if (spawnSync('ip', ['netns', 'add', probe]).status !== 0) return 'cannot create network namespaces (ip netns)';
    spawnSync('ip', ['netns', 'del', probe]);
    return hasCommand('tc') ? null : 'needs tc (iproute2)';
  },
  chromium: () => (existsSync('/usr/bin/chromium') ? null : 'needs Debian\'s chromium at /usr/bin/chromium (apt-get install chromium)'),
  root: () => (process.getuid?.() === 0 ? null : 'needs root (network boot binds its DHCP and TFTP sockets to an interface)'),
  curl: () => (hasCommand('curl') ? null : 'needs curl'),
  // Making, growing and checking filesystems (the restore tests): util-linux, gdisk, e2fsprogs, ntfs-3g, xfsprogs, btrfs-progs, partclone.
  fstools: () => {
    const tools = ['sfdisk', 'sgdisk', 'mkswap', 'blkid', 'mkfs.ext4', 'debugfs', 'resize2fs', 'mkntfs', 'ntfsresize', 'ntfsfix', 'mkfs.xfs', 'xfs_growfs', 'xfs_repair', 'mkfs.btrfs', 'btrfs', 'partclone.extfs', 'mkfs.vfat', 'fsck.fat'];
    const absent = tools.filter((t) => !hasCommand(t));
    return absent.length === 0 ? null : `needs ${absent.join(', ')} (apt-get install fdisk gdisk e2fsprogs ntfs-3g xfsprogs btrfs-progs dosfstools partclone)`;
  },
  zstd: () => (nativeIfBuilt()?.zstdAvailable() === true ? null : 'needs libzstd.so.1 (apt-get install libzstd1) and the native module (node native/build.mjs)'),
  tcpdump: () => (hasCommand('tcpdump') ? null : 'needs tcpdump (apt-get install tcpdump)'),
  atftp: () => (hasCommand('atftp') ? null : 'needs the atftp client (apt-get install atftp)'),
  tftp: () => (hasCommand('tftp') ? null : 'needs the tftp-hpa client (apt-get install tftp-hpa)'),
  dhclient: () => (hasCommand('dhclient') ? null : 'needs ISC dhclient (apt-get install isc-dhcp-client)'),
  udhcpc: () => (spawnSync('busybox', ['udhcpc', '--help']).status !== 127 && hasCommand('busybox') ? null : 'needs busybox with udhcpc (apt-get install busybox-static)'),
  dnsmasq: () => (hasCommand('dnsmasq') ? null : 'needs dnsmasq (apt-get install dnsmasq-base)'),
  radvd: () => (hasCommand('radvd') ? null : 'needs radvd (apt-get install radvd)'),
  qemu: () => (hasCommand('qemu-system-x86_64') && existsSync('/usr/share/ovmf/OVMF.fd') && existsSync('/usr/lib/ipxe/undionly.kpxe') ? null : 'needs qemu-system-x86, ovmf and ipxe (apt-get install qemu-system-x86 ovmf ipxe ipxe-qemu)'),
  secureboot: () =>
    ['/usr/share/OVMF/OVMF_CODE_4M.secboot.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd'].every((f) => existsSync(f)) && hasCommand('dpkg-deb') && hasCommand('apt-get')
      ? null
      : 'needs OVMF\'s Secure Boot firmware and Microsoft-keyed variables (apt-get install ovmf) and dpkg/apt-get (shim-signed and grub-efi-amd64-signed are fetched with apt-get download)',
  kernel: () => (cachedKernelPackage() !== null ? null : `needs a Debian kernel package in ${KERNEL_CACHE} (.ci/run downloads it with apt-get download)`),
  'qemu-utils': () => (hasCommand('qemu-img') && hasCommand('qemu-nbd') ? null : 'needs qemu-img and qemu-nbd (apt-get install qemu-utils)'),
  blkio: () => (existsSync('/sys/fs/cgroup/blkio/cgroup.procs') ? null : 'needs the cgroup v1 blkio controller at /sys/fs/cgroup/blkio'),
  // The image repository's real S3 server (test/swift-lab.mjs): Debian's OpenStack Swift with s3api, and s3cmd as the plain client.
  s3: () =>
    process.getuid?.() === 0 &&
    ['/usr/bin/swift-proxy-server', '/usr/bin/swift-account-server', '/usr/bin/swift-container-server', '/usr/bin/swift-object-server'].every((f) => existsSync(f)) &&
    hasCommand('swift-ring-builder') &&
    hasCommand('s3cmd') &&
    spawnSync('/usr/bin/python3', ['-c', 'import swift.common.middleware.s3api']).status === 0
      ? null
      : 'needs root, OpenStack Swift with s3api and s3cmd (apt-get install swift swift-proxy swift-object swift-container swift-account python3-swift s3cmd)',
  fuse: () =>
    existsSync('/dev/fuse') && spawnSync('/usr/bin/python3', ['-c', 'import fusepy']).status === 0 && process.getuid?.() === 0 ? null : 'needs root, /dev/fuse and python3-fusepy (Debian)',
};

/** Missing capabilities among `caps`, with reasons. */
export function missing(caps: string[]): string[] {
  return caps.map((c) => CAPABILITIES[c]()).filter((r): r is string => r !== null);
}

/**
 * it() that needs capabilities: skipped with the reason on a laptop, a
 * failure when CLONECAST_REQUIRE_ALL=1 (CI).
 */
export function itNeeds(caps: string[], name: string, fn: () => Promise<void> | void, timeout?: number): void {
  const why = missing(caps);
  if (why.length === 0) it(name, fn, timeout);
  else if (process.env.CLONECAST_REQUIRE_ALL === '1') it(name, () => { throw new Error(`CLONECAST_REQUIRE_ALL is set but this test cannot run: ${why.join('; ')}`); });
  else it.skip(`${name} (skipped: ${why.join('; ')})`, fn);
}

/** Result of a CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  json: any;
}

/** Runs bin/clonecast with args and returns its exit code and output. */
export function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => {
      let json: any;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolveRun({ code: code ?? -1, stdout, stderr, json });
    });
  });
}

const attached: string[] = [];

/** Attaches a loop device to file; detachLoops() (in an afterAll) detaches it. */
export function loopAttach(file: string, extra: string[] = []): string {
  const dev = execFileSync('losetup', ['-f', '--show', ...extra, file], { encoding: 'utf8' }).trim();
  attached.push(dev);
  return dev;
}

/** Unmounts and detaches every loop device loopAttach() made. */
export function detachLoops(): void {
  for (const dev of attached.splice(0)) {
    spawnSync('sh', ['-c', `grep -o "^${dev}[^ ]*" /proc/mounts | xargs -r -n1 umount -l`]);
    spawnSync('losetup', ['-d', dev]);
  }
}

/** Writes pseudo-random bytes from a seed (repeatable test data). */
export function seeded(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out.writeUInt32LE(s >>> 0, i - (i + 4 > size ? i + 4 - size : 0));
  }
  return out;
}

/** Compressible text-like bytes. */
export function texty(size: number, seed: number): Buffer {
  const words = ['clonecast', 'chunk', 'multicast', 'disk', 'image', 'lab', 'agent', 'server', String(seed)];
  const parts: string[] = [];
  let n = 0;
  let s = seed;
  while (n < size) {
    s = (s * 1103515245 + 12345) >>> 0;
    const w = words[s % words.length];
    parts.push(w);
    n += w.length + 1;
  }
  return Buffer.from(parts.join(' ')).subarray(0, size);
}

/** A server as tests reach it: its https:// URL and its certificate's fingerprint. */
export interface TlsServer {
  url: string;
  fingerprint: string;
}

/** fetch() on a test server over TLS pinned to its certificate. */
export function serverFetch(srv: TlsServer, path: string, init: Omit<PinnedInit, 'pin'> = {}): Promise<PinnedResponse> {
  return pinnedFetch(new URL(path, srv.url), { ...init, pin: srv.fingerprint });
}

/**
 * Chromium flags that trust a test server's certificate by its public key
 * (Chromium's own pin: --ignore-certificate-errors-spki-list) and nothing else.
 */
export function chromiumPin(certDir: string): string[] {
  return [`--ignore-certificate-errors-spki-list=${spkiHash(certDir)}`];
}

/** SHA-256 of the public key of DIR/cert.pem, base64 (what Chromium's and curl's key pins take). */
export function spkiHash(certDir: string): string {
  const key = new X509Certificate(readFileSync(join(certDir, 'cert.pem'))).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(key).digest('base64');
}

/** curl options that accept only the server whose DIR/cert.pem this is (the key pinned; no CA vouches for it). */
export function curlPin(certDir: string): string[] {
  return ['--insecure', '--pinnedpubkey', `sha256//${spkiHash(certDir)}`];
}

/** Logs a dashboard page in by typing the token into its login field (the page keeps it in memory only). */
export async function dashboardLogin(page: { waitForSelector(s: string): Promise<unknown>; fill(s: string, v: string): Promise<void>; click(s: string): Promise<void> }, token: string): Promise<void> {
  await page.waitForSelector('#login:not([hidden]) #token');
  await page.fill('#token', token);
  await page.click('#login button');
}

/** A WebSocket to a path of a test server, over TLS pinned to its certificate. */
export function serverSocket(srv: TlsServer, path: string, options: ClientOptions = {}): WebSocket {
  return new WebSocket(wssUrl(path, srv.url), { ...options, ...pinnedWebSocketOptions(srv.fingerprint) });
}

/** Runs cmd in cwd; resolves with its exit code and everything it printed (stdout and stderr together). */
export function run(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { cwd });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.on('close', (code) => resolve({ code, out }));
  });
}

/** Waits until check() is true, polling every everyMs; throws with what after timeoutMs. */
export async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * page.goto that tries again when Chromium reports ERR_NETWORK_CHANGED: it
 * watches the interfaces of its network namespace, and a lab built or torn
 * down beside it (veth pairs appear there before they move) aborts a load,
 * or only one of the page's scripts (the page then never starts).
 */
export async function gotoSteady(
  page: { goto(url: string): Promise<unknown>; on(e: 'requestfailed', f: (r: { failure(): { errorText: string } | null }) => void): unknown; off(e: 'requestfailed', f: (r: { failure(): { errorText: string } | null }) => void): unknown },
  url: string,
  tries = 5,
): Promise<void> {
  for (let i = 1; ; i++) {
    let changed = false;
    const seen = (r: { failure(): { errorText: string } | null }) => {
      if (/ERR_NETWORK_CHANGED/.test(r.failure()?.errorText ?? '')) changed = true;
    };
    page.on('requestfailed', seen);
    try {
      await page.goto(url);
    } catch (err) {
      if (!/ERR_NETWORK_CHANGED/.test((err as Error).message)) throw err;
      changed = true;
    } finally {
      page.off('requestfailed', seen);
    }
    if (!changed) return;
    if (i >= tries) throw new Error(`loading ${url} failed ${tries} times with ERR_NETWORK_CHANGED`);
    await new Promise((r) => setTimeout(r, 500 * i));
  }
}
