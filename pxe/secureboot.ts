/**
 * The Secure Boot chain from Debian's signed binaries: shim (signed with
 * Microsoft's third-party UEFI CA) loads the network GRUB (signed with
 * Debian's key, which shim carries), which loads Debian's signed kernel; the
 * kernel then enforces module signatures (lockdown). `bootenv build` collects
 * shim and GRUB from the shim-signed and grub-efi-amd64-signed packages
 * (pxe/signed-packages.ts; dpkg-deb -x: nothing is installed) and checks the
 * kernel's and the modules' signatures; `serve --secure-boot` hands shim to
 * UEFI PXE clients (pxe/service.ts) and serves GRUB, grub/grub.cfg, each
 * machine's GRUB config, the kernel and the initramfs beside it over TFTP.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ARCH } from '../protocol/dhcp.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { grubQuote } from './grub.js';
import { signedPackage } from './signed-packages.js';
import type { GeneratedFile, GeneratedFiles } from './tftp-generated.js';

/** The signed binaries and where they come from. `as`: the name they are served under (shim asks TFTP for grubx64.efi beside itself). */
export const SIGNED_FILES = Object.freeze({
  shim: { pkg: 'shim-signed', path: 'usr/lib/shim/shimx64.efi.signed', as: 'shimx64.efi' },
  grub: { pkg: 'grub-efi-amd64-signed', path: 'usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed', as: 'grubx64.efi' },
});

/** The boot file UEFI clients get under Secure Boot. */
export const SHIM_FILE = SIGNED_FILES.shim.as;

/** The trailer the kernel's sign-file appends to a signed module (include/linux/module_signature.h). */
export const MODULE_SIGNATURE_MAGIC = '~Module signature appended~\n';

/** What a PE file's certificate table holds (PE/COFF spec, "The Attribute Certificate Table"). */
export interface PeSignature {
  /** One WIN_CERTIFICATE of type PKCS_SIGNED_DATA (Authenticode) at least. */
  signed: boolean;
  /** Bytes of the certificate table. */
  bytes: number;
  /** Common names in it (certificates, and the signer's issuer), for the build's report. */
  signers: string[];
}

/**
 * The Authenticode signature of a PE image (an EFI binary, a bzImage), or
 * null if buf is not a PE image. Every offset is checked against the file:
 * the input is a downloaded file.
 */
export function peSignature(buf: Buffer): PeSignature | null {
  if (buf.length < 0x40 || buf.readUInt16LE(0) !== 0x5a4d) return null; // "MZ"
  const pe = buf.readUInt32LE(0x3c);
  if (pe + 24 > buf.length || buf.readUInt32LE(pe) !== 0x00004550) return null; // "PE\0\0"
  const opt = pe + 24;
  const magic = buf.readUInt16LE(opt);
  // Data directories start at 96 (PE32) or 112 (PE32+); the certificate table is entry 4 (8 bytes each).
  const dirs = magic === 0x20b ? opt + 112 : magic === 0x10b ? opt + 96 : -1;
  if (dirs < 0 || dirs + 5 * 8 > buf.length) return null;
  const count = buf.readUInt32LE(dirs - 4);
  if (count < 5) return { signed: false, bytes: 0, signers: [] };
  const at = buf.readUInt32LE(dirs + 32); // a file offset, not an RVA
  const size = buf.readUInt32LE(dirs + 36);
  if (size === 0 || at === 0 || at + size > buf.length || size < 8) return { signed: false, bytes: 0, signers: [] };
  let signed = false;
  // WIN_CERTIFICATE: dwLength u32, wRevision u16 (0x0200), wCertificateType u16 (0x0002 PKCS_SIGNED_DATA); 8-byte aligned.
  for (let p = at; p + 8 <= at + size; ) {
    const len = buf.readUInt32LE(p);
    if (len < 8 || p + len > at + size) break;
    if (buf.readUInt16LE(p + 4) === 0x0200 && buf.readUInt16LE(p + 6) === 0x0002) signed = true;
    p += (len + 7) & ~7;
  }
  return { signed, bytes: size, signers: commonNames(buf.subarray(at, at + size)) };
}

/** Common names in DER: OID 2.5.4.3 (06 03 55 04 03) then a short PrintableString or UTF8String. */
function commonNames(der: Buffer): string[] {
  const out = new Set<string>();
  const oid = Buffer.from([0x06, 0x03, 0x55, 0x04, 0x03]);
  for (let i = der.indexOf(oid); i >= 0 && i + 7 <= der.length; i = der.indexOf(oid, i + 1)) {
    const tag = der[i + 5];
    const len = der[i + 6];
    if ((tag === 0x13 || tag === 0x0c) && len < 0x80 && i + 7 + len <= der.length) out.add(der.toString('utf8', i + 7, i + 7 + len));
  }
  return [...out];
}

/** Does a kernel module (uncompressed) carry an appended signature? */
export function moduleSigned(ko: Buffer): boolean {
  return ko.length > MODULE_SIGNATURE_MAGIC.length && ko.toString('latin1', ko.length - MODULE_SIGNATURE_MAGIC.length) === MODULE_SIGNATURE_MAGIC;
}

/** A module file's bytes, uncompressed (.ko, .ko.xz, .ko.zst, .ko.gz). */
function moduleBytes(file: string): Buffer {
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : file.endsWith('.gz') ? 'gzip' : null;
  if (tool === null) return readFileSync(file);
  const r = spawnSync(tool, ['-dc', file], { maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new ClonecastError(ERR.NOT_FOUND, `cannot decompress ${file} with ${tool} to check its signature`);
  return r.stdout;
}

/** The kernel modules under dir (any depth) that carry no signature, as paths relative to dir, and how many were checked. */
export function unsignedModules(dir: string): { checked: number; unsigned: string[] } {
  const unsigned: string[] = [];
  let checked = 0;
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name), join(rel, e.name));
      else if (/\.ko(\.(xz|zst|gz))?$/.test(e.name)) {
        checked++;
        if (!moduleSigned(moduleBytes(join(d, e.name)))) unsigned.push(join(rel, e.name));
      }
    }
  };
  if (existsSync(dir)) walk(dir, '');
  return { checked, unsigned };
}

/** What collectSecureBoot() found. */
export interface SecureBootFiles {
  shim: string;
  grub: string;
  /** Organisations named in each file's signature. */
  signers: { shim: string[]; grub: string[]; kernel: string[] };
  modulesChecked: number;
}

/**
 * Puts shimx64.efi and grubx64.efi (Debian's signed shim and network GRUB)
 * into out, and checks that the kernel and every module under modulesDir
 * are signed; throws with what is wrong. work: a scratch folder.
 */
export function collectSecureBoot(o: { out: string; kernel: string; modulesDir: string; cacheDir: string; sharedCache: string; work: string; log?: (m: string) => void }): SecureBootFiles {
  const signers = { shim: [] as string[], grub: [] as string[], kernel: [] as string[] };
  const kernel = peSignature(readFileSync(o.kernel));
  if (kernel === null || !kernel.signed) throw new ClonecastError(ERR.NOT_FOUND, `the kernel ${o.kernel} carries no Authenticode signature: Secure Boot would refuse it; use Debian's linux-image-*-amd64 (signed)`);
  signers.kernel = kernel.signers;
  const mods = unsignedModules(o.modulesDir);
  if (mods.unsigned.length > 0) throw new ClonecastError(ERR.NOT_FOUND, `${mods.unsigned.length} kernel module(s) carry no signature and would not load under Secure Boot lockdown: ${mods.unsigned.slice(0, 5).join(', ')}`);
  for (const key of ['shim', 'grub'] as const) {
    const f = SIGNED_FILES[key];
    const deb = signedPackage(f.pkg, o.cacheDir, o.sharedCache, o.log);
    const x = join(o.work, `sb-${key}`);
    rmSync(x, { recursive: true, force: true });
    const r = spawnSync('dpkg-deb', ['-x', deb, x], { encoding: 'utf8' });
    if (r.status !== 0 || !existsSync(join(x, f.path))) throw new ClonecastError(ERR.NOT_FOUND, `${deb} holds no ${f.path}: ${r.stderr ?? ''}`.trim());
    const sig = peSignature(readFileSync(join(x, f.path)));
    if (sig === null || !sig.signed) throw new ClonecastError(ERR.NOT_FOUND, `${f.path} in ${deb} carries no signature`);
    signers[key] = sig.signers;
    copyFileSync(join(x, f.path), join(o.out, `${f.as}.tmp`));
    renameSync(join(o.out, `${f.as}.tmp`), join(o.out, f.as));
    rmSync(x, { recursive: true, force: true });
  }
  return { shim: join(o.out, SIGNED_FILES.shim.as), grub: join(o.out, SIGNED_FILES.grub.as), signers, modulesChecked: mods.checked };
}

/** The signed files missing from a boot folder (names). */
export function missingSecureBootFiles(bootDir: string): string[] {
  return Object.values(SIGNED_FILES)
    .map((f) => f.as)
    .filter((n) => !existsSync(join(bootDir, n)));
}

/** Where GRUB asks TFTP for a machine's own config: grub/clonecast/MAC.cfg ($net_default_mac: aa:bb:cc:dd:ee:ff). */
export const GRUB_MACHINE_CONFIG = /^\/?grub\/clonecast\/([0-9a-f]{2}(?::[0-9a-f]{2}){5})\.cfg$/;

/**
 * The static grub/grub.cfg served over TFTP. GRUB asks for it without saying
 * which machine it is, so it only chains to the machine's own config, by the
 * MAC of the card GRUB booted from ($net_default_mac, set by GRUB's efinet),
 * made on request by the TFTP server (secureBootGenerator()). Over TFTP:
 * Debian's signed network GRUB 2.06 has no http built in (it asks TFTP for
 * http.mod, which it could not load under Secure Boot anyway).
 */
export function staticGrubConfig(): string {
  return [
    '# clonecast: chain to this machine\'s own config (made per machine by the server)',
    'set timeout=0',
    `echo ${grubQuote('clonecast: GRUB asks for this machine\'s boot config')}`,
    'configfile "$prefix/clonecast/${net_default_mac}.cfg"',
    `echo ${grubQuote('clonecast: no boot config from the server; trying again in 10 s')}`,
    'sleep 10',
    'configfile "$prefix/grub.cfg"',
    '',
  ].join('\n');
}

/**
 * The TFTP server's generator for grub/clonecast/MAC.cfg: the machine's
 * config from config(mac, client) (which applies the boot route's limits),
 * written to a private file for the transfer. With boot (the boot folder
 * and the kernel's and initramfs's names in it), boot/KERNEL and
 * boot/INITRD are the boot folder's own files, read when each transfer
 * starts, like the HTTP route's: a `bootenv build` while serve runs (which
 * renames each into place) is served at once, never an old initramfs with
 * a new kernel. Other names are not its.
 */
export function secureBootGenerator(files: GeneratedFiles, config: ((mac: string, client: string) => { error: string } | { content: string }) | undefined, boot?: { dir: string; kernel: string; initrd: string }) {
  const direct = new Map<string, string>(boot === undefined ? [] : [boot.kernel, boot.initrd].map((n) => [`boot/${n}`, join(boot.dir, n)] as const));
  return (name: string, client: string): { error: string } | GeneratedFile | null => {
    const asked = name.replace(/\\/g, '/').replace(/^\//, '');
    const file = direct.get(asked);
    if (file !== undefined) return existsSync(file) ? { path: file, done: () => undefined } : { error: `${asked} is not in the boot folder; run "clonecast bootenv build"` };
    const m = GRUB_MACHINE_CONFIG.exec(name.replace(/\\/g, '/').toLowerCase());
    if (m === null) return null;
    const r = config?.(m[1], client) ?? { error: 'Secure Boot is not set up on this server' };
    return 'error' in r ? r : files.make(r.content);
  };
}

/**
 * Copies shimx64.efi and grubx64.efi from the boot folder into the TFTP root
 * and writes grub/grub.cfg (GRUB's prefix is /grub on the TFTP server). The
 * kernel and initramfs are not copied: secureBootGenerator() serves them
 * from the boot folder. Throws with what to do when the signed files are not there.
 */
export function prepareSecureBootTftp(root: string, bootDir: string): void {
  const missing = missingSecureBootFiles(bootDir);
  if (missing.length > 0) {
    throw new ClonecastError(ERR.NOT_FOUND, `Secure Boot needs Debian's signed shim and GRUB (${missing.join(', ')} missing in ${bootDir}); run "clonecast bootenv build" (it fetches shim-signed and grub-efi-amd64-signed with apt-get download), or run serve without --secure-boot`);
  }
  mkdirSync(join(root, 'grub'), { recursive: true });
  // Earlier versions hard-linked the kernel and initramfs here: a rebuild then left a stale pair.
  rmSync(join(root, 'boot'), { recursive: true, force: true });
  for (const f of Object.values(SIGNED_FILES)) {
    const from = join(bootDir, f.as);
    const to = join(root, f.as);
    // Copied, never linked: a later build renames new files into the boot folder, and a copy stays whole.
    if (!existsSync(to) || !readFileSync(to).equals(readFileSync(from))) {
      copyFileSync(from, `${to}.tmp`);
      renameSync(`${to}.tmp`, to);
    }
  }
  writeFileSync(join(root, 'grub', 'grub.cfg.tmp'), staticGrubConfig());
  renameSync(join(root, 'grub', 'grub.cfg.tmp'), join(root, 'grub', 'grub.cfg'));
}

/**
 * Why Secure Boot cannot be served in this PXE mode, or null. Debian's
 * signed network GRUB (2.06) takes its TFTP server and $prefix from the
 * firmware's copy of the DHCP server's answer only, never from a proxyDHCP
 * offer, and carries no embedded config that would look beside shim
 * ($cmdpath) instead: beside a site DHCP server it asks that server's
 * next-server (or nobody) for grub/grub.cfg and stops at a grub> prompt.
 */
export function secureBootModeError(mode: 'proxy' | 'full'): string | null {
  if (mode === 'full') return null;
  return (
    "Secure Boot does not work with --pxe proxy: Debian's signed GRUB takes its TFTP server from the site DHCP server's answer, not from this server's proxyDHCP offer, so it never finds its config here. " +
    "Run serve --pxe full --secure-boot on a boot network of its own, or set the site DHCP server's next-server (option 66) to this server and its boot file (option 67) to shimx64.efi for those machines"
  );
}

/**
 * SHIM_FILE when a client of this architecture boots through shim: x64 UEFI
 * (RFC 4578 arch 7 or 9) and Secure Boot on for it (machines.json's
 * secureBoot, else --secure-boot); null for iPXE. A machine sent to shim
 * while the signed files are missing, or in proxy mode, gets iPXE, with a
 * warning once.
 */
export function secureBootFile(arch: number | null, global: boolean, perMachine: boolean | undefined, state: { ready: boolean; warned: Set<string>; mode?: 'proxy' | 'full' }, mac: string, log?: (level: 'info' | 'warn' | 'debug', message: string) => void): string | null {
  if (arch !== ARCH.EFI_X64 && arch !== ARCH.EFI_BC) return null;
  if (!(perMachine ?? global)) return null;
  // In proxy mode GRUB would never find its config here (secureBootModeError()): iPXE at least boots.
  const why = state.mode === 'proxy' ? `the GRUB that shim loads cannot find its config through proxyDHCP (use --pxe full)` : 'the boot folder has no signed shim and GRUB. Run "clonecast bootenv build" to collect them';
  if (state.ready && state.mode !== 'proxy') return SHIM_FILE;
  if (!state.warned.has(mac) && state.warned.size < 1024) {
    state.warned.add(mac);
    log?.('warn', `pxe: ${mac} should boot through shim (machines.json secureBoot), but ${why}; it gets iPXE`);
  }
  return null;
}
