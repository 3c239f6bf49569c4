/**
 * Secure Boot in real firmware: two q35 VMs with OVMF's Secure Boot build
 * and Microsoft's keys enrolled (OVMF_CODE_4M.secboot.fd, a copy of
 * OVMF_VARS_4M.ms.fd, SMM on) PXE-boot with OVMF's own network stack from
 * one server. The one machines.json sends through shim ("secureBoot": true)
 * runs shim, GRUB (its config fetched over HTTP by MAC) and Debian's signed
 * kernel, loads its signed modules under lockdown, runs the agent and gets a
 * small image deployed and verified. The other is handed the unsigned
 * ipxe.efi, which the same firmware refuses (the negative control).
 */
import { afterAll, describe, expect } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildBootEnv } from '../../pxe/bootenv.js';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { itNeeds, seeded, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';

const MiB = 1 << 20;
const CODE = '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd';
const VARS = '/usr/share/OVMF/OVMF_VARS_4M.ms.fd';
const SIGNED = '52:54:00:77:0b:01';
const UNSIGNED = '52:54:00:77:0b:02';

describe('Secure Boot: shim, GRUB and the signed kernel in OVMF with Microsoft keys', () => {
  const dir = tempDir('sb');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl', 'qemu', 'kernel', 'secureboot'], 'a Secure Boot VM is imaged through shim and GRUB; the same firmware refuses iPXE', async () => {
    // A small image: 8 MiB with 3 MiB of data in the middle.
    const raw = join(dir, 'small.raw');
    const image = Buffer.alloc(8 * MiB);
    seeded(3 * MiB, 7).copy(image, 2 * MiB);
    writeFileSync(raw, image);
    const data = join(dir, 'data');
    await importImage(Store.open(data), raw, 'small', {});

    const bootDir = join(dir, 'boot');
    const env = buildBootEnv({ out: bootDir, log: (m) => console.log(`bootenv: ${m}`) });
    expect(env.secureBoot.ok, JSON.stringify(env.secureBoot)).toBe(true);
    if (!env.secureBoot.ok) return;
    expect(env.secureBoot.signers.shim).toContain('Microsoft Corporation UEFI CA 2011');
    expect(env.secureBoot.signers.grub.some((n) => /^Debian Secure Boot Signer/.test(n))).toBe(true);
    expect(env.secureBoot.signers.kernel.some((n) => /^Debian Secure Boot Signer/.test(n))).toBe(true);
    expect(env.secureBoot.modulesChecked).toBeGreaterThan(0);

    fleet = new Fleet(dir, data, 0);
    const lab = fleet.lab;
    mkdirSync(join(data, 'pxe'), { recursive: true });
    // Per machine: one through shim, one left to the default (iPXE).
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ [SIGNED]: { action: 'agent', secureBoot: true }, [UNSIGNED]: { action: 'agent' } }));
    await fleet.startServer(['--pxe', 'full', '--boot-dir', bootDir]);
    const deploy = fleet.deploy('small', ['--machines', SIGNED, '--after', 'poweroff']);

    const vms = [SIGNED, UNSIGNED].map((mac, i) => {
      const disk = join(dir, `disk${i}.img`);
      writeFileSync(disk, Buffer.alloc(0));
      writeFileSync(disk, Buffer.alloc(8 * MiB));
      const vars = join(dir, `vars${i}.fd`);
      copyFileSync(VARS, vars);
      const tap = lab.addTap(`sbtap${i}`);
      const args = [
        '-machine', 'q35,smm=on,graphics=off', '-global', 'driver=cfi.pflash01,property=secure,value=on',
        '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${CODE}`, '-drive', `if=pflash,format=raw,unit=1,file=${vars}`,
        '-m', '1024', '-nographic', '-no-reboot',
        '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`,
        // romfile= empty: OVMF's own network driver and PXE client, no iPXE option ROM.
        '-device', `virtio-net-pci,netdev=n0,mac=${mac},romfile=,bootindex=1`,
        '-drive', `file=${disk},if=virtio,format=raw`,
      ];
      const t0 = Date.now();
      const q = lab.spawnIn(lab.bridgeNamespace, 'qemu-system-x86_64', args);
      const vm = { mac, disk, serial: '', ended: false, child: q, agentAt: 0, seconds: 0 };
      q.stdout!.on('data', (d) => {
        vm.serial += d;
        if (vm.agentAt === 0 && /info connected to http/.test(vm.serial)) vm.agentAt = (Date.now() - t0) / 1000;
      });
      q.stderr!.on('data', (d) => (vm.serial += d));
      q.on('close', () => Object.assign(vm, { ended: true, seconds: (Date.now() - t0) / 1000 }));
      return vm;
    });
    const [good, bad] = vms;
    const clean = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    try {
      // The negative control: refused by the firmware, then nothing more to see.
      await until(() => /Access Denied/.test(clean(bad.serial)), 300_000, 'the firmware to refuse ipxe.efi');
      bad.child.kill('SIGKILL');
      await until(() => good.ended, 540_000, 'the Secure Boot VM to be imaged and power off');
    } finally {
      if (!good.ended) console.log(`Secure Boot VM serial:\n${clean(good.serial).slice(-4000)}`);
      if (!/Access Denied/.test(clean(bad.serial))) console.log(`iPXE VM serial:\n${clean(bad.serial).slice(-3000)}`);
      if (!good.ended) console.log(`server:\n${fleet.server?.out.split('\n').filter((l) => /pxe|tftp|boot|GRUB/i.test(l)).slice(-40).join('\n')}`);
    }
    const serial = clean(good.serial);
    console.log(`Secure Boot VM: power-on to agent connected ${good.agentAt.toFixed(1)} s; to verified disk and power-off ${good.seconds.toFixed(1)} s`);
    console.log(serial.split('\n').filter((l) => /clonecast|Secure boot|Access Denied/.test(l)).slice(0, 12).join('\n'));
    console.log(fleet.server!.out.split('\n').filter((l) => /tftp: sent|GRUB config/.test(l)).join('\n'));
    expect(good.agentAt).toBeGreaterThan(0);
    // Full mode: shim, then GRUB and its static config over TFTP; the other VM got iPXE.
    for (const f of ['shimx64.efi', 'grubx64.efi', 'grub/grub.cfg', 'ipxe.efi']) expect(fleet.server!.out).toMatch(new RegExp(`tftp: sent /?${f.replace('.', '\\.')} to 10\\.77\\.`));
    expect(fleet.server!.out).toMatch(new RegExp(`boot: GRUB config for ${SIGNED}: agent`));
    // The kernel says Secure Boot was on (bootenv-init prints its line); modules loaded under lockdown.
    expect(serial).toMatch(/clonecast-boot: .*Secure boot enabled/);
    expect(serial).not.toMatch(/Loading of unsigned module is rejected|module verification failed|Key was rejected/);
    expect(serial).toMatch(/clonecast-boot: network up/);
    expect(serial, serial.slice(-2000)).toMatch(/clonecast-boot: done and verified; powering off/);
    expect(await deploy.exited, deploy.out).toBe(0);
    expect(deploy.out).toMatch(/1 of 1 machine\(s\) done and verified; session done/);
    expect(readFileSync(good.disk).equals(image)).toBe(true);
    const machines = await fleet.api('GET', '/api/machines');
    const m = machines.find((x: any) => x.id === SIGNED);
    expect(m?.lastImage?.verified).toBe(true);
    expect(m?.trust).toBe('credential');
    expect(machines.some((x: any) => x.id === UNSIGNED)).toBe(false);
    expect(existsSync(join(data, 'pxe', 'tftp', 'grub', 'grub.cfg'))).toBe(true);
  }, 900_000);
});
