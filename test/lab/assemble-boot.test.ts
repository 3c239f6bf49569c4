/**
 * An assembled disk boots: the ESP from one source disk (GPT) and an ext4
 * root from another (MBR) become one new GPT disk, exported raw and booted
 * in qemu with OVMF. There is no boot loader on the ESP, so OVMF starts its
 * built-in UEFI Shell, which maps the partitions it found in the new GPT
 * (their fresh GUIDs and LBAs show in its mapping table), runs startup.nsh
 * from the ESP (a marker), dumps the root partition's ext4 superblock (its
 * volume label shows) and powers the VM off.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { assembleImage } from '../../server/store/assemble.js';
import { parsePartSpec } from '../../server/store/assemble-plan.js';
import { itNeeds, tempDir } from '../helpers.js';

const MiB = 1 << 20;
const MARKER = 'CLONECAST-ASSEMBLED-ESP-OK';
const LABEL = 'CCROOTOK'; // 8 bytes: one line of the shell's hex dump holds all of it
const OVMF = '/usr/share/ovmf/OVMF.fd';

const children: number[] = [];
afterAll(() => {
  for (const pid of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Runs qemu until the guest powers off (or timeoutMs); resolves with its console output, escapes removed. */
function boot(disk: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const args = ['-machine', 'q35', '-m', '256', '-nographic', '-machine', 'graphics=off', '-bios', OVMF, '-drive', `file=${disk},format=raw,if=virtio`, '-nic', 'none', '-serial', 'mon:stdio'];
    const q = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(q.pid!);
    let out = '';
    q.stdout.on('data', (d) => (out += d));
    q.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => q.kill('SIGKILL'), timeoutMs);
    // eslint-disable-next-line no-control-regex
    q.on('close', () => (clearTimeout(timer), resolve(out.replace(/\x1b\[[0-9;=?]*[A-Za-z]/g, ''))));
  });
}

describe('an assembled disk boots', () => {
  itNeeds(['qemu', 'sgdisk', 'sfdisk', 'mkfs', 'vfat'], 'OVMF finds the new GPT: the ESP from one source runs its startup.nsh, the root from the other is where the table says', async () => {
    const dir = tempDir('asmboot');
    const store = Store.open(join(dir, 'data'));
    // Source A: GPT with a 16 MiB FAT ESP holding startup.nsh, and another partition.
    const a = join(dir, 'a.img');
    writeFileSync(a, '');
    execFileSync('truncate', ['-s', '40M', a]);
    execFileSync('sgdisk', ['-n1:2048:+16M', '-t1:ef00', '-c1:ESP', '-n2:0:0', '-t2:8300', a], { stdio: 'ignore' });
    const esp = join(dir, 'esp.img');
    execFileSync('truncate', ['-s', '16M', esp]);
    execFileSync('mkfs.vfat', ['-F', '16', esp], { stdio: 'ignore' });
    const nsh = join(dir, 'startup.nsh');
    const blks = Array.from({ length: 6 }, (_, i) => `dblk blk${i} 2 1`).join('\r\n');
    writeFileSync(nsh, `echo ${MARKER}\r\nmap\r\n${blks}\r\nreset -s\r\n`);
    execFileSync('mcopy', ['-i', esp, nsh, '::/startup.nsh']);
    execFileSync('dd', [`if=${esp}`, `of=${a}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none']);
    // Source B: MBR with an ext4 root (its label is the second marker).
    const b = join(dir, 'b.img');
    writeFileSync(b, '');
    execFileSync('truncate', ['-s', '24M', b]);
    execFileSync('sfdisk', ['-q', b], { input: 'label: dos\nstart=2048, size=40960, type=83\n' });
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', LABEL, '-E', `offset=${MiB}`, b, '20M'], { stdio: 'ignore' });
    await importImage(store, a, 'laptop', { workers: 2 });
    await importImage(store, b, 'desktop', { workers: 2 });
    const s = await assembleImage(store, 'vm', ['laptop:1', 'desktop:1'].map(parsePartSpec));
    const disk = join(dir, 'vm.img');
    await exportImage(store, { name: 'vm' }, disk);
    const [espPart, rootPart] = s.table.partitions;
    const serial = await boot(disk, 240_000);
    const hd = (n: number, p: { uuid?: string; start: number; size: number }) => `HD(${n},GPT,${p.uuid!.toUpperCase()},0x${(p.start / 512).toString(16).toUpperCase()},0x${(p.size / 512).toString(16).toUpperCase()})`;
    expect(serial, serial.slice(-3000)).toMatch(new RegExp(`^${MARKER}\\s*$`, 'm'));
    expect(serial).toContain(hd(1, espPart));
    expect(serial).toContain(hd(2, rootPart));
    expect(serial).toContain(LABEL);
  }, 300_000);
});
