/**
 * Drivers by modalias: ONE qemu VM with every network card and disk
 * controller this qemu emulates that a PC has (e1000e, rtl8139, vmxnet3,
 * virtio-net, a USB network adapter behind xHCI; NVMe, AHCI, virtio-blk,
 * virtio-scsi and an LSI MegaRAID SAS HBA) PXE-boots on its e1000e into the
 * boot environment `clonecast bootenv build` made, whose init loads what the
 * devices' modaliases ask for. Its console must name each card's and disk's
 * driver, and the agent's inventory at the server must list every disk.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { buildBootEnv } from '../../pxe/bootenv.js';
import { itNeeds, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';

const MiB = 1 << 20;
const MAC = '52:54:00:77:16:01';

describe('drivers: a VM with five network cards and five disk controllers boots into the agent', () => {
  const dir = tempDir('drivers');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl', 'qemu', 'kernel', 'radvd'], 'each card and disk is named with its driver, and the server lists every disk', async () => {
    const bootDir = join(dir, 'boot');
    // A fast xz preset: the kernel unpacks any xz preset alike; 9e only makes it smaller.
    const env = buildBootEnv({ out: bootDir, xzPreset: '1' });
    console.log(`boot environment: ${env.modules.length} modules, kernel ${(env.kernelBytes / MiB).toFixed(1)} MiB, initramfs ${(env.initrdBytes / MiB).toFixed(1)} MiB (xz -1), built in ${env.seconds.toFixed(1)} s`);

    const data = join(dir, 'data');
    mkdirSync(data, { recursive: true });
    fleet = new Fleet(dir, data, 0);
    const lab = fleet.lab;
    await fleet.startServer(['--pxe', 'full', '--boot-dir', bootDir, '--pxe-idle', 'agent']);
    execFileSync('sh', ['-c', `printf '%s\\n' 'interface eth0 { AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4; prefix fd77::/64 { AdvOnLink on; AdvAutonomous on; }; };' > ${join(dir, 'radvd.conf')}`]);
    lab.execIn(lab.server.ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1']);
    lab.spawnIn(lab.server.ns, 'radvd', ['-n', '-C', join(dir, 'radvd.conf'), '-p', join(dir, 'radvd.pid'), '-m', 'stderr']);

    // Disks of distinct sizes, so that each is recognised in the inventory.
    const sizes = { nvme: 20, ahci: 24, vblk: 28, vscsi: 32, sas: 36 };
    const disk = (name: keyof typeof sizes) => {
      const f = join(dir, `${name}.img`);
      execFileSync('truncate', ['-s', `${sizes[name] * MiB}`, f]);
      return `file=${f},format=raw,if=none,id=${name}`;
    };
    const tap = lab.addTap('tap0');
    const args = ['-m', '1536', '-nographic', '-machine', 'q35,graphics=off', '-no-reboot', '-boot', 'n'];
    // The boot card (its iPXE ROM) on the lab; the others, without ROMs, on a hub of their own.
    args.push('-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '-device', `e1000e,netdev=n0,mac=${MAC},bootindex=1`);
    for (const [i, model] of ['rtl8139', 'vmxnet3', 'virtio-net-pci'].entries()) {
      args.push('-netdev', `hubport,id=h${i},hubid=1`, '-device', `${model},netdev=h${i},romfile=,mac=52:54:00:77:16:1${i}`);
    }
    args.push('-device', 'qemu-xhci,id=xhci', '-netdev', 'hubport,id=h9,hubid=1', '-device', 'usb-net,bus=xhci.0,netdev=h9,mac=52:54:00:77:16:19');
    args.push('-drive', disk('nvme'), '-device', 'nvme,drive=nvme,serial=cc16nvme');
    args.push('-drive', disk('ahci'), '-device', 'ide-hd,drive=ahci,bus=ide.0'); // q35's own ICH9 AHCI controller
    args.push('-drive', disk('vblk'), '-device', 'virtio-blk-pci,drive=vblk');
    args.push('-device', 'virtio-scsi-pci,id=vs', '-drive', disk('vscsi'), '-device', 'scsi-hd,drive=vscsi,bus=vs.0');
    args.push('-device', 'megasas,id=sas', '-drive', disk('sas'), '-device', 'scsi-hd,drive=sas,bus=sas.0');
    const q = lab.spawnIn(lab.bridgeNamespace, 'qemu-system-x86_64', args);
    let serial = '';
    q.stdout!.on('data', (d) => (serial += d));
    q.stderr!.on('data', (d) => (serial += d));
    const clean = () => serial.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    let machine: any;
    try {
      await until(async () => {
        if (q.exitCode !== null) throw new Error(`qemu exited ${q.exitCode}: ${clean().slice(-3000)}`);
        const ms = (await fleet!.api('GET', '/api/machines')) as any[];
        machine = ms.find((m) => m.id === MAC && m.online);
        return machine !== undefined;
      }, 420_000, 'the VM\'s agent to connect');
    } finally {
      if (machine === undefined) console.log(`serial:\n${clean().slice(-4000)}`);
      q.kill('SIGKILL');
    }
    const console_ = clean();
    console.log(console_.split('\n').filter((l) => /clonecast-boot: (drivers:|network|disk) /.test(l)).join('\n'));
    // Each card with its driver (the boot card is the lab's e1000e).
    for (const [mac, driver] of [[MAC, 'e1000e'], ['52:54:00:77:16:10', '8139(?:too|cp)'], ['52:54:00:77:16:11', 'vmxnet3'], ['52:54:00:77:16:12', 'virtio_net']]) {
      expect(console_, `card ${mac}`).toMatch(new RegExp(`clonecast-boot: network \\S+ \\S+ [^\\n]*\\b${driver}\\b[^\\n]* ${mac}`));
    }
    // qemu's usb-net is a CDC/RNDIS gadget (its interface gets a MAC of its own): a USB CDC driver behind xHCI.
    expect(console_).toMatch(/clonecast-boot: network usb0 \S+ (?:cdc_ether|cdc_subset|rndis_host) usb xhci_hcd /);
    expect(console_).toMatch(/clonecast-boot: drivers: \d+ modules loaded for the devices' modaliases in \d+ passes/);
    // Each disk with its controller's driver.
    expect(console_).toMatch(/clonecast-boot: disk nvme0n1 \S+ nvme 20 MiB/);
    expect(console_).toMatch(/clonecast-boot: disk vd[a-z] \S+ virtio_blk virtio-pci 28 MiB/);
    for (const [driver, size] of [['ahci', 24], ['virtio_scsi', 32], ['megaraid_sas', 36]] as const) {
      expect(console_, driver).toMatch(new RegExp(`clonecast-boot: disk sd[a-z] \\S+ sd [^\\n]*\\b${driver}\\b[^\\n]* ${size} MiB`));
    }
    // The agent's inventory at the server: every disk.
    const got = (machine.disks as { device: string; size: number }[]).map((d) => d.size / MiB).sort((a, b) => a - b);
    expect(got, JSON.stringify(machine.disks)).toEqual(Object.values(sizes));
  }, 600_000);
});
