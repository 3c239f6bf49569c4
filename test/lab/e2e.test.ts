/**
 * The classroom end to end, with no manual step on any machine: two qemu
 * VMs (BIOS and UEFI) with empty 32 MiB virtual disks PXE-boot in proxy mode beside
 * dnsmasq, load the boot environment `clonecast bootenv build` made, run the
 * agent, join one multicast session of an image with a GPT and an ext4
 * filesystem, write and verify their disks and power off. On the host each
 * disk must equal the image, `sgdisk -v` must find no problem and `e2fsck
 * -fn` must find the filesystem clean, with the known files in it.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildBootEnv } from '../../pxe/bootenv.js';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { itNeeds, seeded, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';

const MiB = 1 << 20;

describe('end to end: bare VMs PXE-boot into the agent and get imaged by multicast', () => {
  const dir = tempDir('e2e');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl', 'qemu', 'kernel', 'radvd', 'dnsmasq', 'sgdisk', 'mkfs'], 'a BIOS and a UEFI VM each end with a verified, byte-identical disk', async () => {
    // The image: GPT (ESP + Linux), ext4 with known files.
    const raw = join(dir, 'classroom.raw');
    const files = join(dir, 'files');
    mkdirSync(files);
    writeFileSync(join(files, 'random.bin'), seeded(6 * MiB, 42));
    writeFileSync(join(files, 'hello.txt'), 'hello from clonecast\n');
    execFileSync('truncate', ['-s', `${32 * MiB}`, raw]);
    execFileSync('sgdisk', ['-n', '1:2048:+8M', '-t', '1:ef00', '-c', '1:ESP', '-n', '2:0:0', '-t', '2:8300', '-c', '2:root', raw], { stdio: 'ignore' }); // (-q would make sgdisk write nothing to a blank disk)
    const rootStart = 18432 * 512;
    execFileSync('mkfs.ext4', ['-q', '-d', files, '-E', `offset=${rootStart}`, raw, '13M']);
    const data = join(dir, 'data');
    await importImage(Store.open(data), raw, 'classroom', {});
    const image = readFileSync(raw);

    const bootDir = join(dir, 'boot');
    const env = buildBootEnv({ out: bootDir, xzPreset: '1' }); // a fast xz preset: the same files, a larger archive
    // The tools of used-block capture and the libraries they link are in it.
    const listing = execFileSync('sh', ['-c', `xz -dc '${env.initrd}' | cpio -t --quiet`], { encoding: 'utf8', maxBuffer: 64 << 20 });
    for (const f of ['sbin/partclone.extfs', 'sbin/partclone.ntfs', 'sbin/blkid', 'sbin/losetup', 'sbin/mkswap', 'libext2fs.so.2', 'libntfs-3g.so', 'libcrypto.so.3', 'usr/sbin/resize2fs', 'libhivex.so.0']) expect(listing).toContain(f);
    console.log(`boot environment: kernel ${env.kernelVersion} ${(env.kernelBytes / MiB).toFixed(1)} MiB, initramfs ${(env.initrdBytes / MiB).toFixed(1)} MiB, built in ${env.seconds.toFixed(1)} s`);

    fleet = new Fleet(dir, data, 0);
    const lab = fleet.lab;
    // The BIOS VM is named by the administrator (its script carries a boot credential); the UEFI VM
    // boots for the --any session with none (its agent connects unverified). Both paths end the same.
    mkdirSync(join(data, 'pxe'), { recursive: true });
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ '52:54:00:77:01:01': { action: 'agent' } }));
    await fleet.startServer(['--pxe', 'proxy', '--boot-dir', bootDir]);
    writeFileSync(join(dir, 'radvd.conf'), 'interface eth0 { AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4; prefix fd77::/64 { AdvOnLink on; AdvAutonomous on; }; };\n');
    lab.execIn(lab.server.ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1']);
    lab.spawnIn(lab.server.ns, 'radvd', ['-n', '-C', join(dir, 'radvd.conf'), '-p', join(dir, 'radvd.pid'), '-m', 'stderr']);
    const school = lab.addBareHost(9);
    lab.execIn(school.ns, 'ip', ['addr', 'add', '10.77.0.2/24', 'dev', 'eth0']);
    lab.spawnIn(school.ns, 'dnsmasq', ['--no-daemon', '--port=0', '--interface=eth0', '--bind-interfaces', '--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h', `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`, `--pid-file=${join(dir, 'dnsmasq.pid')}`]);

    const deploy = fleet.deploy('classroom', ['--any', '--clients', '2', '--after', 'poweroff']);
    const vms = (['bios', 'uefi'] as const).map((firmware, i) => {
      const disk = join(dir, `${firmware}.img`);
      // The same size as the image: on a larger disk the GPT's backup header would stay where the
      // image ended, and sgdisk -v would rightly say so (moving it is not done yet).
      execFileSync('truncate', ['-s', `${32 * MiB}`, disk]);
      const tap = lab.addTap(`tap${i}`);
      const args = ['-m', '1024', '-nographic', '-machine', 'graphics=off', '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`];
      args.push('-device', `e1000,netdev=n0,mac=52:54:00:77:01:0${i + 1}`, '-drive', `file=${disk},if=virtio,format=raw`, '-boot', 'n', '-no-reboot');
      if (firmware === 'uefi') args.unshift('-bios', '/usr/share/ovmf/OVMF.fd');
      const t0 = Date.now();
      const q = lab.spawnIn(lab.bridgeNamespace, 'qemu-system-x86_64', args);
      const vm = { firmware, disk, serial: '', seconds: 0, code: null as number | null, ended: false, agentAt: 0 };
      q.stdout!.on('data', (d) => {
        vm.serial += d;
        if (vm.agentAt === 0 && /info connected to http/.test(vm.serial)) vm.agentAt = (Date.now() - t0) / 1000;
      });
      q.stderr!.on('data', (d) => (vm.serial += d));
      q.on('close', (code) => Object.assign(vm, { code, ended: true, seconds: (Date.now() - t0) / 1000 }));
      return vm;
    });
    try {
      await until(() => vms.every((v) => v.ended), 420_000, 'both VMs to power off');
    } finally {
      for (const v of vms) if (!v.ended) console.log(`${v.firmware} serial:\n${v.serial.slice(-3000)}`);
    }
    expect(await deploy.exited, deploy.out).toBe(0);
    expect(deploy.out).toMatch(/2 of 2 machine\(s\) done and verified; session done/);
    const clean = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    for (const v of vms) {
      const serial = clean(v.serial);
      expect(serial, `${v.firmware}: ${serial.slice(-2000)}`).toMatch(/clonecast-boot: done and verified; powering off/);
      const up = /clonecast-boot: network up/.exec(serial);
      expect(up).not.toBeNull();
      console.log(`${v.firmware} VM: power-on to agent connected ${v.agentAt.toFixed(1)} s; to verified disk and power-off ${v.seconds.toFixed(1)} s`);
      expect(v.agentAt).toBeGreaterThan(0);
      // Byte for byte, then the partition table and the filesystem as tools see them.
      expect(readFileSync(v.disk).subarray(0, image.length).equals(image), `${v.firmware} disk differs`).toBe(true);
      const sg = spawnSync('sgdisk', ['-v', v.disk], { encoding: 'utf8' });
      expect(sg.stdout).toMatch(/No problems found/);
      // sgdisk -v also says that of a blank disk: the table must really be there.
      const table = spawnSync('sgdisk', ['-p', v.disk], { encoding: 'utf8' }).stdout;
      expect(table).toMatch(/^\s+1\s+2048\s+18431\s.*EF00\s+ESP$/m);
      expect(table).toMatch(/^\s+2\s+18432\s.*8300\s+root$/m);
      const fsck = spawnSync('e2fsck', ['-fn', `${v.disk}?offset=${rootStart}`], { encoding: 'utf8' });
      expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
      const cat = spawnSync('debugfs', ['-R', 'cat /hello.txt', `${v.disk}?offset=${rootStart}`], { encoding: 'utf8' });
      expect(cat.stdout).toBe('hello from clonecast\n');
    }
    const machines = await fleet.api('GET', '/api/machines');
    expect(machines.map((m: any) => m.lastImage?.verified)).toEqual([true, true]);
    const trust = Object.fromEntries(machines.map((m: any) => [m.id, m.trust]));
    expect(trust).toEqual({ '52:54:00:77:01:01': 'credential', '52:54:00:77:01:02': 'unverified' });
    expect(fleet.server!.out).toMatch(/boot: script for 52:54:00:77:01:01: agent(?: \(machines\.json\))?, with a boot credential for this machine/);
    expect(fleet.server!.out).toMatch(/boot: script for 52:54:00:77:01:02: agent, no credential \(unverified\)/);
    expect(machines.map((m: any) => m.bootMode).sort()).toEqual(['bios', 'uefi']);
  }, 600_000);
});
