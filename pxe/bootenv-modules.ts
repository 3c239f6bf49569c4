/**
 * The kernel modules of the boot environment: every wired network card and
 * every disk controller driver of the Debian kernel package, with what they
 * depend on, kept at their paths under lib/modules/VERSION/kernel so that
 * busybox depmod writes modules.dep and modules.alias for them. The init
 * (bootenv-init.sh) then loads what the machine's devices ask for, by their
 * modaliases, with busybox modprobe: no list of cards or controllers.
 *
 * The modules stay as Debian signed them (no strip, no recompression: this
 * kernel has no CONFIG_MODULE_DECOMPRESS, and a stripped module loses its
 * signature, which Secure Boot lockdown checks); the initramfs is compressed
 * as a whole instead.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';

/**
 * Which module trees are carried, as paths under lib/modules/VERSION/kernel
 * (a folder takes everything under it). Wired network only: wireless, CAN, WWAN,
 * amateur radio and the like cannot network-boot a PC.
 */
export const MODULE_TREES = Object.freeze([
  // network: Ethernet cards of every vendor, their PHYs and MDIO buses, USB adapters (r8152, ax88179_178a, cdc_ether...), virtual machines' cards
  'drivers/net/ethernet', 'drivers/net/phy', 'drivers/net/mdio', 'drivers/net/pcs', 'drivers/net/usb', 'drivers/net/vmxnet3', 'drivers/net/hyperv',
  'drivers/net/virtio_net.ko', 'drivers/net/net_failover.ko', 'drivers/net/mii.ko', 'drivers/net/mdio.ko', 'drivers/net/xen-netfront.ko',
  // disks: NVMe, SATA/PATA, SCSI with SAS and RAID host adapters, virtio and Xen block devices, SD/eMMC, USB storage
  'drivers/nvme/host', 'drivers/ata', 'drivers/scsi', 'drivers/block/virtio_blk.ko', 'drivers/block/xen-blkfront.ko', 'drivers/mmc', 'drivers/usb/storage',
  'drivers/memstick/host', 'drivers/misc/cardreader',
  // buses and bridges the above sit behind: Intel VMD, Hyper-V's PCI, USB host controllers, virtio transports, Hyper-V's VMBus
  'drivers/pci/controller', 'drivers/usb/host', 'drivers/usb/core', 'drivers/usb/common', 'drivers/virtio', 'drivers/hv',
]);

/**
 * Left out of MODULE_TREES' folders: SAN initiators (Fibre Channel, FCoE, iSCSI)
 * and SCSI tape and media changers, which hold no disk a PC boots from, and debug
 * drivers. Each is a path prefix under lib/modules/VERSION/kernel.
 */
export const MODULE_EXCLUDED = Object.freeze([
  'drivers/scsi/lpfc', 'drivers/scsi/qla2xxx', 'drivers/scsi/qla4xxx', 'drivers/scsi/bfa', 'drivers/scsi/bnx2fc', 'drivers/scsi/bnx2i', 'drivers/scsi/fcoe',
  'drivers/scsi/cxgbi', 'drivers/scsi/be2iscsi', 'drivers/scsi/qedf', 'drivers/scsi/qedi', 'drivers/scsi/csiostor', 'drivers/scsi/fnic', 'drivers/scsi/libfc',
  'drivers/scsi/iscsi_tcp.ko', 'drivers/scsi/libiscsi.ko', 'drivers/scsi/libiscsi_tcp.ko', 'drivers/scsi/scsi_transport_iscsi.ko', 'drivers/scsi/scsi_debug.ko',
  'drivers/scsi/st.ko', 'drivers/scsi/ch.ko', 'drivers/scsi/osst.ko', 'drivers/scsi/sr_mod.ko',
  'drivers/net/ethernet/mellanox/mlxsw',
]);

/** Drivers a boot environment must carry; a unit test checks each is there with its dependencies. */
export const NAMED_DRIVERS = Object.freeze([
  'nvme', 'vmd', 'ahci', 'ata_piix', 'mpt3sas', 'megaraid_sas', 'sd_mod', 'virtio_net', 'virtio_blk', 'virtio_scsi', 'virtio_pci',
  'e1000', 'e1000e', 'igb', 'igc', 'r8169', 'tg3', 'bnx2', 'r8152', 'ax88179_178a', 'cdc_ether', 'vmxnet3', 'xhci_pci', 'ehci_pci', 'uas', 'sdhci_pci', 'hv_netvsc', 'hv_storvsc',
]);

/** A module's name as the kernel knows it (dashes are underscores). */
export function moduleName(file: string): string {
  return file.replace(/^.*\//, '').replace(/\.ko(\.xz|\.zst|\.gz)?$/, '').replace(/-/g, '_');
}

/** A module's dependencies, from the depends= field of its .modinfo section. */
export function moduleDepends(file: string): string[] {
  const m = /(?:^|\0)depends=([^\0]*)\0/.exec(readFileSync(file, 'latin1'));
  return m === null || m[1] === '' ? [] : m[1].split(',').map((d) => d.replace(/-/g, '_'));
}

/** Every module of a kernel tree: name → path relative to it. */
export function moduleIndex(kernelDir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ko(\.xz|\.zst)?$/.test(e.name)) index.set(moduleName(e.name), relative(kernelDir, p));
    }
  };
  walk(kernelDir);
  return index;
}

const under = (rel: string, prefix: string) => rel === prefix || rel.startsWith(`${prefix}/`);

/** The modules MODULE_TREES selects, minus MODULE_EXCLUDED, plus extra ones by name, plus their dependencies (names, sorted). */
export function selectModules(kernelDir: string, index: Map<string, string> = moduleIndex(kernelDir), extra: readonly string[] = []): string[] {
  const chosen = new Set<string>();
  const visit = (name: string) => {
    if (chosen.has(name)) return;
    const rel = index.get(name);
    if (rel === undefined) return; // built into the kernel
    chosen.add(name);
    for (const d of moduleDepends(join(kernelDir, rel))) visit(d);
  };
  for (const [name, rel] of index) {
    if (MODULE_TREES.some((t) => under(rel, t)) && !MODULE_EXCLUDED.some((t) => under(rel, t))) visit(name);
  }
  for (const name of extra) visit(name);
  return [...chosen].sort();
}

/** What copyModules() put in the initramfs. */
export interface ModuleSet {
  names: string[];
  bytes: number;
  /** Name → path of each copied module. */
  files: Map<string, string>;
}

/**
 * Copies the selected modules of lib/modules/VERSION from the unpacked kernel
 * package (x) into root, with modules.builtin and modules.order, and runs
 * busybox depmod there for modules.dep and modules.alias.
 */
export function copyModules(x: string, root: string, version: string, extra: readonly string[] = []): ModuleSet {
  const src = join(x, 'lib', 'modules', version);
  const dst = join(root, 'lib', 'modules', version);
  const kernelDir = join(src, 'kernel');
  const index = moduleIndex(kernelDir);
  const names = selectModules(kernelDir, index, extra);
  let bytes = 0;
  const files = new Map<string, string>();
  for (const name of names) {
    const rel = index.get(name)!;
    const to = join(dst, 'kernel', rel);
    files.set(name, to);
    mkdirSync(dirname(to), { recursive: true });
    copyFileSync(join(kernelDir, rel), to);
    bytes += readFileSync(to).length;
  }
  for (const f of ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']) if (existsSync(join(src, f))) copyFileSync(join(src, f), join(dst, f));
  const r = spawnSync('/bin/busybox', ['depmod', '-b', root, version], { encoding: 'utf8' });
  if (r.status !== 0 || !existsSync(join(dst, 'modules.alias'))) {
    throw new ClonecastError(ERR.NOT_FOUND, `busybox depmod failed (${r.stderr?.trim() || r.error?.message}): apt-get install busybox-static`);
  }
  return { names, bytes, files };
}
