/**
 * Network boot as `clonecast serve --pxe proxy|full` runs it: a TFTP root
 * holding only the iPXE binaries (from Debian's ipxe package), the DHCP or
 * proxyDHCP server choosing a binary by client architecture, and, once a
 * client is iPXE, an HTTP URL of its boot script (served by the main HTTP
 * server, with the kernel and initramfs: much faster than TFTP).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { ARCH } from '../protocol/dhcp.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { DhcpServer, type BootRequest } from './dhcp-server.js';
import { TftpServer } from './tftp-server.js';
import { intToIp, ipToInt } from './leases.js';
import { prepareSecureBootTftp, secureBootFile, secureBootGenerator, secureBootModeError } from './secureboot.js';
import { GeneratedFiles } from './tftp-generated.js';

/** Where Debian's ipxe package puts its binaries. */
export const IPXE_DIR = '/usr/lib/ipxe';
/** The binaries handed out, by the architectures that load them. */
export const IPXE_FILES = Object.freeze({ bios: 'undionly.kpxe', efi: 'ipxe.efi', snp: 'snponly.efi' });

/** How long after handing a client iPXE its next DHCP transaction counts as that iPXE's, ms. */
const CHAIN_MS = 120_000;
/** MACs whose chainload is remembered at most. */
const CHAINED_MAX = 4096;

/** Options of startPxe(). */
export interface PxeOptions {
  mode: 'proxy' | 'full';
  interface: string;
  /** The plain-HTTP boot listener's base URL as clients reach it, e.g. http://10.77.0.1:8081/. */
  httpBase: string;
  dataRoot: string;
  /** Full mode: "START-END"; default: the interface's subnet from .100 to .199 (or its upper half). */
  pool?: string;
  router?: string;
  dns?: string[];
  leaseSeconds?: number;
  /**
   * Machines the server does not know (not in its registry, no static
   * lease, no entry in pxe/machines.json): boot them (default), or ignore
   * them (DHCP and proxyDHCP say nothing to them: no address, no boot file).
   */
  unknown?: 'boot' | 'ignore';
  /** Answer only known machines: unknown ones are ignored as above, and their boot script is refused too. */
  knownOnly?: boolean;
  isKnown?: (mac: string) => boolean;
  /** Full mode: fixed addresses by MAC. */
  statics?: Map<string, string>;
  /** UEFI binary: ipxe.efi (its own drivers, default) or snponly.efi (the firmware's network driver). */
  efiBinary?: 'ipxe.efi' | 'snponly.efi';
  /** UEFI machines get Debian's signed shim, GRUB and kernel instead of iPXE (pxe/secureboot.ts); per machine: machines.json "secureBoot". */
  secureBoot?: boolean;
  /** The boot environment (shimx64.efi, grubx64.efi, the kernel and initramfs come from there; default DATA/pxe/boot). */
  bootDir?: string;
  kernel?: string;
  initrd?: string;
  /** Secure Boot: the GRUB config of a machine (the boot route's rules), served as grub/clonecast/MAC.cfg. */
  grubConfig?: (mac: string, client: string) => { error: string } | { content: string };
  ipxeDir?: string;
  /** Test ports. */
  dhcpPort?: number;
  pxePort?: number;
  tftpPort?: number;
  clientPort?: number;
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
  /** Called once when the services end: with the socket error that ended them, or undefined on close(). */
  onClosed?: (err: Error | undefined) => void;
}

/** The running PXE services. */
export interface PxeServices {
  dhcp: DhcpServer;
  tftp: TftpServer;
  serverAddress: string;
  tftpRoot: string;
  /** Only known machines are answered (--pxe-known-only): the boot script route refuses others. */
  knownOnly: boolean;
  /** Is mac a machine the server knows (registry, static lease, pxe/machines.json)? */
  knows(mac: string): boolean;
  /** The error that ended the services, once one has. */
  readonly error: Error | undefined;
  /** Ends both services (every socket and timer) and writes pending leases; the one error path. */
  close(err?: Error): Promise<void>;
}

/** The IPv4 address and netmask of an interface; throws with the interfaces there are. */
export function interfaceV4(name: string): { address: string; netmask: string } {
  const all = networkInterfaces();
  const v4 = (all[name] ?? []).find((a) => a.family === 'IPv4');
  if (v4 === undefined) throw new ClonecastError(ERR.NOT_FOUND, `interface "${name}" has no IPv4 address (interfaces here: ${Object.keys(all).join(', ')})`);
  return { address: v4.address, netmask: v4.netmask };
}

/** The default pool: hosts .100-.199 of a /24 or wider, else the upper half of the subnet. */
export function defaultPool(address: string, netmask: string): { start: string; end: string } {
  const mask = ipToInt(netmask);
  const net = (ipToInt(address) & mask) >>> 0;
  const size = (~mask >>> 0) + 1;
  if (size >= 256) return { start: intToIp(net + 100), end: intToIp(net + 199) };
  return { start: intToIp(net + Math.floor(size / 2)), end: intToIp(net + size - 2) };
}

/** Parses "START-END". */
export function parsePool(pool: string): { start: string; end: string } {
  const m = /^(\d+\.\d+\.\d+\.\d+)-(\d+\.\d+\.\d+\.\d+)$/.exec(pool);
  if (m === null || ipToInt(m[1]) > ipToInt(m[2])) throw new ClonecastError(ERR.USAGE, `--pool takes START-END, e.g. 10.77.0.100-10.77.0.199; got "${pool}"`);
  return { start: m[1], end: m[2] };
}

/** Copies the iPXE binaries into the TFTP root; says what to install if they are missing. */
export function prepareTftpRoot(root: string, ipxeDir = IPXE_DIR): void {
  mkdirSync(root, { recursive: true });
  const missing = Object.values(IPXE_FILES).filter((f) => !existsSync(join(ipxeDir, f)));
  if (missing.length > 0) {
    throw new ClonecastError(ERR.NOT_FOUND, `network boot needs the iPXE binaries (${missing.join(', ')} missing in ${ipxeDir}); install them with "apt-get install ipxe" (Debian/Ubuntu), or run serve without --pxe`);
  }
  for (const f of Object.values(IPXE_FILES)) {
    const from = join(ipxeDir, f);
    const to = join(root, f);
    if (!existsSync(to) || statSync(to).size !== statSync(from).size || !readFileSync(to).equals(readFileSync(from))) copyFileSync(from, to);
  }
}

/**
 * The Secure Boot files in the TFTP root: required with --secure-boot (throws
 * with what to do), else put there when the boot folder has them, for
 * machines that machines.json sends through shim.
 */
function prepareSecureBoot(o: PxeOptions, tftpRoot: string): { ready: boolean; file: string; warned: Set<string>; mode: 'proxy' | 'full' } {
  const bootDir = o.bootDir ?? join(o.dataRoot, 'pxe', 'boot');
  try {
    prepareSecureBootTftp(tftpRoot, bootDir);
    return { ready: true, file: 'shimx64.efi', warned: new Set(), mode: o.mode };
  } catch (err) {
    if (o.secureBoot === true) throw err;
    return { ready: false, file: 'shimx64.efi', warned: new Set(), mode: o.mode };
  }
}

/** Turns a socket error of the PXE services into what to do about it. */
function explain(err: unknown, what: string, o: PxeOptions): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EPERM' || code === 'EACCES') {
    return new ClonecastError(ERR.REFUSED, `network boot needs root (or CAP_NET_RAW and CAP_NET_BIND_SERVICE) for ${what} on ${o.interface}`, {}, { cause: err });
  }
  if (code === 'EADDRINUSE') {
    return new ClonecastError(ERR.BUSY, `${what} is already served on this host (another DHCP or TFTP server, e.g. dnsmasq?); stop it, or run serve without --pxe`, {}, { cause: err });
  }
  return err;
}

/**
 * Which machines network boot answers. knows: in the registry, with a
 * static lease, or in pxe/machines.json. admit: answered at all (in any
 * mode: DHCP, proxyDHCP, port 4011): not an ignored machine, and known
 * unless unknown machines are booted.
 */
export function admission(o: Pick<PxeOptions, 'dataRoot' | 'isKnown' | 'statics' | 'unknown' | 'knownOnly'>): { knows: (mac: string) => boolean; admit: (mac: string) => boolean } {
  const knows = (mac: string) => (o.isKnown?.(mac) ?? false) || (o.statics?.has(mac) ?? false) || machineOverride(o.dataRoot, mac) !== undefined;
  const ignoreUnknown = o.knownOnly === true || (o.unknown ?? 'boot') === 'ignore';
  const admit = (mac: string) => machineOverride(o.dataRoot, mac)?.ignore !== true && (!ignoreUnknown || knows(mac));
  return { knows, admit };
}

/** Starts TFTP and DHCP/proxyDHCP on the interface. */
export async function startPxe(o: PxeOptions): Promise<PxeServices> {
  const { address, netmask } = interfaceV4(o.interface);
  const tftpRoot = join(o.dataRoot, 'pxe', 'tftp');
  const modeError = o.secureBoot === true ? secureBootModeError(o.mode) : null;
  if (modeError !== null) throw new ClonecastError(ERR.USAGE, modeError);
  checkOverrides(o.dataRoot);
  prepareTftpRoot(tftpRoot, o.ipxeDir);
  const secureBoot = prepareSecureBoot(o, tftpRoot);
  // GRUB loads the kernel and initramfs over TFTP, straight from the boot folder.
  const bootFiles = secureBoot.ready ? { dir: o.bootDir ?? join(o.dataRoot, 'pxe', 'boot'), kernel: o.kernel ?? 'vmlinuz', initrd: o.initrd ?? 'initrd.img' } : undefined;
  const generate = secureBootGenerator(new GeneratedFiles(join(o.dataRoot, 'pxe', 'generated')), o.grubConfig, bootFiles);
  const tftp = new TftpServer({ root: tftpRoot, device: o.interface, port: o.tftpPort, generate, log: o.log });
  await tftp.start().catch((err: unknown) => {
    throw explain(err, `TFTP (port ${o.tftpPort ?? 69})`, o);
  });
  const efi = o.efiBinary ?? IPXE_FILES.efi;
  // Which DHCP transaction of each MAC was handed our iPXE binary, and when.
  const chained = new Map<string, { xid: number; at: number }>();
  const { knows, admit } = admission(o);
  const boot = (r: BootRequest) => {
    const override = machineOverride(o.dataRoot, r.mac);
    if (!admit(r.mac)) return null;
    if (override?.file === undefined && secureBootFile(r.arch, o.secureBoot === true, override?.secureBoot, secureBoot, r.mac, o.log) !== null) return { file: secureBoot.file };
    // Every client first loads our iPXE over TFTP, even an iPXE in a NIC's ROM (whose version and
    // features we do not know). Our iPXE then starts a new DHCP transaction (a new xid): that one
    // gets the boot script's URL, absolute because in proxy mode iPXE's next-server is the router.
    // An iPXE handed the script never gets iPXE again, which would loop.
    const now = Date.now();
    const last = chained.get(r.mac);
    if (r.ipxe && last !== undefined && last.xid !== r.xid && now - last.at < CHAIN_MS) return { file: new URL(`boot/ipxe?mac=${r.mac}`, o.httpBase).toString() };
    if (last === undefined || last.xid !== r.xid || now - last.at >= CHAIN_MS) {
      // Bounded: a flood of made-up MACs leaves at most CHAINED_MAX entries (the oldest go first).
      chained.delete(r.mac);
      chained.set(r.mac, { xid: r.xid, at: now });
      while (chained.size > CHAINED_MAX) chained.delete(chained.keys().next().value!);
    }
    if (override?.file !== undefined) return { file: override.file };
    if (r.arch === null || r.arch === ARCH.BIOS) return { file: IPXE_FILES.bios };
    if (r.arch === ARCH.EFI_X64 || r.arch === ARCH.EFI_BC) return { file: efi };
    o.log?.('warn', `pxe: ${r.mac} has architecture ${r.arch}, for which there is no iPXE binary here; not answering`);
    return null;
  };
  const dhcp = new DhcpServer({
    mode: o.mode,
    device: o.interface,
    serverAddress: address,
    netmask,
    pool: o.mode === 'full' ? (o.pool !== undefined ? parsePool(o.pool) : defaultPool(address, netmask)) : undefined,
    router: o.router,
    dns: o.dns,
    leaseSeconds: o.leaseSeconds,
    leasesPath: join(o.dataRoot, 'pxe', 'leases.json'),
    statics: o.statics,
    boot,
    admit,
    isKnown: knows,
    port: o.dhcpPort,
    pxePort: o.pxePort,
    clientPort: o.clientPort,
    log: o.log,
  });
  try {
    await dhcp.start();
  } catch (err) {
    tftp.close();
    await dhcp.close();
    throw explain(err, `DHCP (port ${o.dhcpPort ?? 67}${o.mode === 'proxy' ? ` and ${o.pxePort ?? 4011}` : ''})`, o);
  }
  let ending: Promise<void> | undefined;
  const services: PxeServices = {
    dhcp,
    tftp,
    serverAddress: address,
    tftpRoot,
    knownOnly: o.knownOnly === true,
    knows,
    error: undefined,
    close(err?: Error) {
      ending ??= (async () => {
        (services as { error: Error | undefined }).error = err;
        if (err !== undefined) o.log?.('warn', `pxe: network boot stopped: ${err.message}; restart the server to serve it again`);
        tftp.close();
        await dhcp.close();
        try {
          o.onClosed?.(err);
        } catch {
          // a reporting callback never breaks shutdown
        }
      })();
      return ending;
    },
  };
  // A failure of either service ends both, through the same path.
  dhcp.once('closed', (err?: Error) => void services.close(err).catch(() => undefined));
  tftp.once('closed', (err?: Error) => void services.close(err).catch(() => undefined));
  return services;
}

/** Per-machine settings in DATA/pxe/machines.json: {"MAC": {"file", "action", "ignore"}}. */
export interface MachineOverride {
  /** Boot file instead of the one for its architecture (a name in the TFTP root). */
  file?: string;
  /** What its script does when it has no work, instead of --pxe-idle. */
  action?: BootAction;
  /** Never answer it. */
  ignore?: boolean;
  /** UEFI: boot it through shim and GRUB (true) or iPXE (false), whatever --secure-boot says. */
  secureBoot?: boolean;
}

/** pxe/machines.json as last read, by path; looked at again at most every OVERRIDES_RECHECK_MS. */
const overrides = new Map<string, { checked: number; stamp: string; all: Record<string, MachineOverride> }>();
/** How often pxe/machines.json is looked at for changes, at most (ms). */
export const OVERRIDES_RECHECK_MS = 1000;

/**
 * The override for mac. The file is small and edited by hand, but asked
 * about on every DHCP packet: it is read again only when its size or time
 * changed, and looked at (one stat) at most once a second.
 */
export function machineOverride(dataRoot: string, mac: string, now = Date.now()): MachineOverride | undefined {
  const path = join(dataRoot, 'pxe', 'machines.json');
  let entry = overrides.get(path);
  if (entry === undefined || now - entry.checked >= OVERRIDES_RECHECK_MS) {
    let stamp = '';
    try {
      const st = statSync(path);
      stamp = `${st.size}:${st.mtimeMs}:${st.ino}`;
    } catch {
      // no file: no overrides
    }
    if (entry === undefined || entry.stamp !== stamp) {
      let all: Record<string, MachineOverride> = {};
      try {
        if (stamp !== '') all = JSON.parse(readFileSync(path, 'utf8')) as Record<string, MachineOverride>;
      } catch {
        all = {}; // a broken file is reported at start (checkOverrides)
      }
      entry = { checked: now, stamp, all };
      overrides.set(path, entry);
    } else entry.checked = now;
  }
  const all = entry.all;
  const hit = Object.hasOwn(all, mac) ? all[mac] : Object.hasOwn(all, mac.toUpperCase()) ? all[mac.toUpperCase()] : Object.hasOwn(all, mac.replace(/:/g, '-')) ? all[mac.replace(/:/g, '-')] : undefined;
  return hit !== null && typeof hit === 'object' ? hit : undefined;
}

/** Checks DATA/pxe/machines.json at start; throws with what is wrong. */
export function checkOverrides(dataRoot: string): void {
  const path = join(dataRoot, 'pxe', 'machines.json');
  if (!existsSync(path)) return;
  let all: unknown;
  try {
    all = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ClonecastError(ERR.USAGE, `${path} is not JSON (${(err as Error).message}); fix it or remove it`);
  }
  for (const [mac, v] of Object.entries(all as Record<string, MachineOverride>)) {
    if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(mac)) throw new ClonecastError(ERR.USAGE, `${path}: "${mac}" is not a MAC address`);
    if (v.action !== undefined && !['agent', 'local', 'menu'].includes(v.action)) throw new ClonecastError(ERR.USAGE, `${path}: ${mac}: action must be agent, local or menu`);
    if (v.secureBoot !== undefined && typeof v.secureBoot !== 'boolean') throw new ClonecastError(ERR.USAGE, `${path}: ${mac}: secureBoot must be true or false`);
  }
}

/** What a machine's iPXE script does. */
export type BootAction = 'agent' | 'local' | 'menu';

/**
 * The iPXE script for one machine. `token` is its boot credential, only for a
 * machine the server names (server/boot-credentials.ts); without it the agent
 * connects unverified. The credential is on the kernel command line only, never in a URL.
 */
export function ipxeScript(action: BootAction, o: { base: string; server: string; fingerprint: string; mac: string; token?: string; kernel: string; initrd: string; cmdline?: string }): string {
  const credential = o.token !== undefined && o.token !== '' ? ` clonecast.token=${o.token}` : '';
  const agent = [
    `echo clonecast: starting the agent for ${o.mac}`,
    // base: the plain-HTTP boot listener (firmware); server: the TLS listener the agent pins by its fingerprint.
    `kernel ${o.base}boot/files/${o.kernel} initrd=${o.initrd} clonecast.server=${o.server} clonecast.fingerprint=${o.fingerprint}${credential} clonecast.mac=${o.mac} ${o.cmdline ?? 'console=tty0 console=ttyS0,115200 quiet'}`,
    `initrd ${o.base}boot/files/${o.initrd}`,
    'boot || goto failed',
  ];
  const local = ['echo clonecast: no work for this machine; booting from its disk', 'sanboot --no-describe --drive 0x80 || exit'];
  const failed = [':failed', 'echo clonecast: the boot failed; trying again in 10 s', 'sleep 10', `chain ${o.base}boot/ipxe?mac=${o.mac}`];
  let body: string[];
  if (action === 'agent') body = [...agent, 'exit', ...failed];
  else if (action === 'local') body = [...local];
  else {
    body = [
      'menu clonecast',
      'item agent  Start the clonecast agent (imaging)',
      'item local  Boot from the local disk',
      'choose --timeout 10000 --default local target || goto local',
      'goto ${target}',
      ':agent',
      ...agent,
      'exit',
      ':local',
      ...local,
      ...failed,
    ];
  }
  return `#!ipxe\n${body.join('\n')}\n`;
}
