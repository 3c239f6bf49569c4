/**
 * Machines come out named: a GPT disk file with an ext4 Linux root and an
 * NTFS Windows system (a SYSTEM hive made here with hivexsh) gets the
 * machine's name written offline; read back with debugfs and with ntfscat +
 * hivexget, every other registry value kept, both filesystems still clean.
 */
import { afterAll, describe, expect } from 'vitest';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { Fleet, until } from './fleet.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detachLoops, itNeeds, loopAttach, tempDir } from '../helpers.js';
import { minimalHive } from '../fixtures/minimal-hive.js';
import { nameMachine } from '../../agent/naming.js';
import { readTable } from '../../native/disk-table.js';
import { Disk } from '../../native/disk.js';

const CAPS = ['root', 'loop', 'naming'];
const MiB = 1 << 20;

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** A disk file: partition 1 ext4 (a Debian-like root), 2 NTFS (a Windows-like system), 3 empty. */
function makeDisk(dir: string, hibernated = false): string {
  mkdirSync(dir, { recursive: true });
  const disk = join(dir, 'disk.img');
  sh('truncate', ['-s', String(64 * MiB), disk]);
  sh('sgdisk', ['-n', '1:1M:+16M', '-t', '1:8300', '-n', '2:0:+24M', '-t', '2:0700', '-n', '3:0:+4M', '-t', '3:8300', disk]);
  const root = join(dir, 'root');
  mkdirSync(join(root, 'etc'), { recursive: true });
  writeFileSync(join(root, 'etc', 'hostname'), 'debian\n');
  writeFileSync(join(root, 'etc', 'hosts'), '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost\n');
  writeFileSync(join(root, 'etc', 'os-release'), 'ID=debian\n');
  const p1 = loopAttach(disk, ['--offset', String(MiB), '--sizelimit', String(16 * MiB)]);
  sh('mkfs.ext4', ['-q', '-d', root, p1]);
  const p2 = loopAttach(disk, ['--offset', String(17 * MiB), '--sizelimit', String(24 * MiB)]);
  sh('mkntfs', ['-Q', '-q', '-F', p2]);
  // The SYSTEM hive of a Windows-like system: control set 2 is the current one.
  const hive = join(dir, 'SYSTEM');
  writeFileSync(hive, minimalHive());
  sh('hivexsh', ['-w', hive], [
    'add Select', 'cd Select', 'setval 1', 'Current', 'dword:0x2', 'cd ..',
    'add ControlSet002', 'cd ControlSet002', 'add Control', 'cd Control', 'add ComputerName', 'cd ComputerName', 'add ComputerName', 'cd ComputerName',
    'setval 1', 'ComputerName', 'string:DESKTOP-OLD', 'cd ..', 'cd ..', 'cd ..',
    'add Services', 'cd Services', 'add Tcpip', 'cd Tcpip', 'add Parameters', 'cd Parameters',
    'setval 3', 'Domain', 'string:lab.example', 'Hostname', 'string:desktop-old', 'NV Hostname', 'string:desktop-old', 'commit', '',
  ].join('\n'));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  sh('ntfs-3g', [p2, mnt]);
  try {
    mkdirSync(join(mnt, 'Windows', 'System32', 'config'), { recursive: true });
    mkdirSync(join(mnt, 'Windows', 'Panther'), { recursive: true });
    sh('cp', [hive, join(mnt, 'Windows', 'System32', 'config', 'SYSTEM')]);
    // Windows hibernated (or Fast Startup): hiberfil.sys starts with "hibr".
    if (hibernated) writeFileSync(join(mnt, 'hiberfil.sys'), Buffer.concat([Buffer.from('hibr'), Buffer.alloc(4092)]));
  } finally {
    sh('umount', [mnt]);
  }
  detachLoops();
  return disk;
}

/** Reads a file of partition k (offset, size) through a loop device. */
function onPartition<T>(disk: string, offset: number, size: number, fn: (loop: string) => T): T {
  const loop = loopAttach(disk, ['--offset', String(offset), '--sizelimit', String(size)]);
  try {
    return fn(loop);
  } finally {
    spawnSync('losetup', ['-d', loop]);
  }
}

describe('naming deployed machines', () => {
  const dir = tempDir('naming');
  afterAll(() => detachLoops());

  itNeeds(CAPS, 'writes the name into the Linux root and the Windows SYSTEM hive, keeping everything else', async () => {
    const disk = makeDisk(dir);
    const d = Disk.open(disk);
    const table = await readTable(d);
    d.close();
    const unattend = '<unattend><ComputerName>{{name}}</ComputerName></unattend>\n';
    const named = await nameMachine(disk, table, 'physics-lab-pc-12', { unattend });
    expect(named.map((n) => [n.partition, n.system])).toEqual([[1, 'linux'], [2, 'windows']]);
    expect(named[1].what).toMatch(/computer name PHYSICS-LAB-PC-/);

    onPartition(disk, MiB, 16 * MiB, (loop) => {
      expect(sh('debugfs', ['-R', 'cat /etc/hostname', loop])).toBe('physics-lab-pc-12\n');
      const hosts = sh('debugfs', ['-R', 'cat /etc/hosts', loop]);
      expect(hosts).toBe('127.0.0.1\tlocalhost\n127.0.1.1\tphysics-lab-pc-12\n::1\tlocalhost ip6-localhost\n');
      expect(sh('debugfs', ['-R', 'stat /etc/hostname', loop])).toMatch(/Mode:\s+0644/);
      expect(spawnSync('e2fsck', ['-fn', loop]).status).toBe(0);
    });
    onPartition(disk, 17 * MiB, 24 * MiB, (loop) => {
      const hive = join(dir, 'SYSTEM.after');
      writeFileSync(hive, spawnSync('ntfscat', [loop, '/Windows/System32/config/SYSTEM']).stdout);
      const get = (key: string, value: string) => sh('hivexget', [hive, key, value]).trim();
      expect(get('\\ControlSet002\\Control\\ComputerName\\ComputerName', 'ComputerName')).toBe('PHYSICS-LAB-PC-'); // 15 characters: NetBIOS
      expect(get('\\ControlSet002\\Services\\Tcpip\\Parameters', 'Hostname')).toBe('physics-lab-pc-12');
      expect(get('\\ControlSet002\\Services\\Tcpip\\Parameters', 'NV Hostname')).toBe('physics-lab-pc-12');
      expect(get('\\ControlSet002\\Services\\Tcpip\\Parameters', 'Domain')).toBe('lab.example'); // kept
      expect(spawnSync('hivexget', [hive, '\\ControlSet001\\Control\\ComputerName\\ComputerName', 'ComputerName']).status).not.toBe(0); // not the current set: untouched
      expect(spawnSync('ntfscat', [loop, '/Windows/Panther/unattend.xml'], { encoding: 'utf8' }).stdout).toBe('<unattend><ComputerName>physics-lab-pc-12</ComputerName></unattend>\n');
      expect(spawnSync('ntfsfix', ['-n', loop]).status).toBe(0);
    });
  }, 120_000);

  itNeeds([...CAPS, 'netns', 'curl'], 'a deploy names each machine after its disk verified, and --no-name-machines does not', async () => {
    const src = makeDisk(join(dir, 'src'));
    const data = join(dir, 'data');
    await importImage(Store.open(data), src, 'win-and-linux', {});
    mkdirSync(join(dir, 'fleet'));
    const fleet = new Fleet(join(dir, 'fleet'), data, 2);
    try {
      for (let k = 0; k < 2; k++) fleet.disk(k, 64 * MiB);
      await fleet.startServer();
      for (let k = 0; k < 2; k++) fleet.startAgent(k);
      await until(async () => (await fleet.online()) === 2, 30_000, '2 agents online');
      const macs = [fleet.mac(0), fleet.mac(1)];
      const set = fleet.run(['machines', 'set', macs[0], '--name', 'room101-pc01', '--groups', 'room101']);
      expect(await set.exited, set.out).toBe(0);
      // Machine 2 has no name: it is deployed but not named.
      const d = fleet.deploy('win-and-linux', ['--machines', macs.join(','), '--now']);
      expect(await d.exited, d.out).toBe(0);
      expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
      const hostname = (k: number) => onPartition(fleet.diskPath(k), MiB, 16 * MiB, (loop) => sh('debugfs', ['-R', 'cat /etc/hostname', loop]));
      const computer = (k: number) =>
        onPartition(fleet.diskPath(k), 17 * MiB, 24 * MiB, (loop) => {
          const hive = join(dir, `SYSTEM.${k}`);
          writeFileSync(hive, spawnSync('ntfscat', [loop, '/Windows/System32/config/SYSTEM']).stdout);
          return sh('hivexget', [hive, '\\ControlSet002\\Control\\ComputerName\\ComputerName', 'ComputerName']).trim();
        });
      expect(hostname(0)).toBe('room101-pc01\n');
      expect(computer(0)).toBe('ROOM101-PC01');
      expect(hostname(1)).toBe('debian\n');
      expect(computer(1)).toBe('DESKTOP-OLD');
      // The same again with --no-name-machines: the image's own names come back.
      const again = fleet.deploy('win-and-linux', ['--machines', macs[0], '--now', '--no-name-machines']);
      expect(await again.exited, again.out).toBe(0);
      expect(hostname(0)).toBe('debian\n');
      expect(computer(0)).toBe('DESKTOP-OLD');
    } finally {
      fleet.down();
    }
  }, 240_000);

  itNeeds([...CAPS, 'fstools'], 'an ext4 root with a journal not yet replayed is named for good: the journal is replayed first, so the first mount does not undo the name', async () => {
    const disk = makeDisk(join(dir, 'journal'));
    // Change /etc/hostname through the kernel, then stop the filesystem dead: the change sits in the journal.
    const mnt = join(dir, 'journal', 'mnt2');
    mkdirSync(mnt);
    const p1 = loopAttach(disk, ['--offset', String(MiB), '--sizelimit', String(16 * MiB)]);
    sh('mount', [p1, mnt]);
    try {
      writeFileSync(join(mnt, 'etc', 'hostname'), 'journalled\n');
      for (let i = 0; i < 50; i++) writeFileSync(join(mnt, 'etc', `f${i}`), `x${i}`);
      sh('sync', []);
      sh('xfs_io', ['-x', '-c', 'shutdown -f', mnt]);
    } finally {
      sh('umount', [mnt]);
      spawnSync('losetup', ['-d', p1]);
    }
    onPartition(disk, MiB, 16 * MiB, (loop) => expect(sh('dumpe2fs', ['-h', loop])).toMatch(/needs_recovery/));
    const d = Disk.open(disk);
    const table = await readTable(d);
    d.close();
    expect((await nameMachine(disk, table, 'after-crash')).map((n) => n.system)).toContain('linux');
    // What the first boot sees: mount (which would replay a journal) and read the name.
    onPartition(disk, MiB, 16 * MiB, (loop) => {
      expect(sh('dumpe2fs', ['-h', loop])).not.toMatch(/needs_recovery/);
      sh('mount', ['-o', 'ro', loop, mnt]);
      try {
        expect(readFileSync(join(mnt, 'etc', 'hostname'), 'utf8')).toBe('after-crash\n');
        expect(readFileSync(join(mnt, 'etc', 'f49'), 'utf8')).toBe('x49');
      } finally {
        sh('umount', [mnt]);
      }
      expect(spawnSync('e2fsck', ['-fn', loop]).status).toBe(0);
    });
  }, 120_000);

  itNeeds(CAPS, 'a hibernated Windows is not named (it would resume over the changed hive), and says why', async () => {
    const disk = makeDisk(join(dir, 'hibernated'), true);
    const d = Disk.open(disk);
    const table = await readTable(d);
    d.close();
    await expect(nameMachine(disk, table, 'pc-7')).rejects.toThrow(/Windows system was not named: .*hibernat/i);
    onPartition(disk, 17 * MiB, 24 * MiB, (loop) => {
      const hive = join(dir, 'SYSTEM.hibernated');
      writeFileSync(hive, spawnSync('ntfscat', [loop, '/Windows/System32/config/SYSTEM']).stdout);
      expect(sh('hivexget', [hive, '\\ControlSet002\\Control\\ComputerName\\ComputerName', 'ComputerName']).trim()).toBe('DESKTOP-OLD');
    });
  });

  itNeeds(CAPS, 'refuses a name the registry would not give, before touching the disk', async () => {
    await expect(nameMachine('/nonexistent', { scheme: 'none', partitions: [], warnings: [] } as never, 'a b')).rejects.toThrow(/cannot be a machine name/);
  });
});
