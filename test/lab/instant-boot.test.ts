/**
 * Instant boot of a stored version for restore testing: the version is served
 * by the NBD export on a Unix socket, a throw-away qcow2 overlay takes the
 * VM's writes (qemu-img create -b nbd+unix://... -F raw), and qemu boots it.
 * The disk is a tiny MBR whose boot code prints a marker on the serial port
 * and then writes a sector through the BIOS (so the overlay gets a write).
 * Afterwards the store is byte for byte what it was.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { NbdServer } from '../../server/nbd/server.js';
import { nbdUnixUri } from '../../server/nbd/howto.js';
import { itNeeds, seeded, tempDir, until } from '../helpers.js';

const MARKER = 'CLONECAST-NBD-BOOT-OK';

/**
 * A 512-byte MBR (real mode, loaded at 0x7c00): print MARKER on COM1, write
 * this sector to LBA 1 with INT 13h AH=03h (so the VM writes to its disk),
 * print "W" + the status, then halt.
 */
function bootSector(): Buffer {
  const msg = Buffer.from(`${MARKER}\r\n\0`, 'latin1');
  const code = [
    0x31, 0xc0, //             xor ax, ax
    0x8e, 0xd8, //             mov ds, ax
    0x8e, 0xc0, //             mov es, ax
    0xbe, 0x00, 0x00, //       mov si, msg (patched below)
    // print:
    0xac, //                   lodsb
    0x84, 0xc0, //             test al, al
    0x74, 0x06, //             jz +6 (to write)
    0xba, 0xf8, 0x03, //       mov dx, 0x3f8
    0xee, //                   out dx, al
    0xeb, 0xf5, //             jmp print
    // write: INT 13h AH=03 AL=1 sector, CH=0 CL=2 (LBA 1), DH=0, DL=drive (BIOS left it in DL; restore 0x80), ES:BX=0x7c00
    0xb8, 0x01, 0x03, //       mov ax, 0x0301
    0xb9, 0x02, 0x00, //       mov cx, 0x0002
    0xba, 0x80, 0x00, //       mov dx, 0x0080
    0xbb, 0x00, 0x7c, //       mov bx, 0x7c00
    0xcd, 0x13, //             int 0x13
    0x88, 0xe0, //             mov al, ah   (status: 0 = written)
    0x04, 0x30, //             add al, '0'
    0xba, 0xf8, 0x03, //       mov dx, 0x3f8
    0xb4, 0x00, //             mov ah, 0
    0x50, //                   push ax
    0xb0, 0x57, //             mov al, 'W'
    0xee, //                   out dx, al
    0x58, //                   pop ax
    0xee, //                   out dx, al
    // halt:
    0xfa, //                   cli
    0xf4, //                   hlt
    0xeb, 0xfc, //             jmp halt
  ];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector);
  const msgAt = code.length;
  sector.writeUInt16LE(0x7c00 + msgAt, 7);
  msg.copy(sector, msgAt);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

/** SHA-256 over every file's path and bytes under dir (the store's state). */
function treeDigest(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (name === 'locks') continue; // the reader's lock comes and goes
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else h.update(relative(dir, p)).update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex');
}

describe('instant boot of a stored version through the NBD export', () => {
  const dir = tempDir('iboot');
  let vm: ChildProcess | undefined;
  let server: NbdServer | undefined;
  afterAll(async () => {
    if (vm?.pid !== undefined && vm.exitCode === null && vm.signalCode === null) process.kill(vm.pid, 'SIGKILL');
    await server?.close();
  });

  itNeeds(['qemu', 'qemu-utils'], 'a VM boots the version from a throw-away overlay; the store is unchanged', async () => {
    const raw = join(dir, 'boot.raw');
    const disk = Buffer.alloc(4 << 20);
    bootSector().copy(disk, 0);
    seeded(1 << 20, 9).copy(disk, 2 << 20);
    writeFileSync(raw, disk);
    const store = Store.open(join(dir, 'data'));
    await importImage(store, raw, 'pc', { workers: 1, chunkSize: 64 << 10 });
    const before = treeDigest(store.root);

    server = new NbdServer(store);
    await server.add({ name: 'pc', version: 1 });
    const sock = join(dir, 'nbd.sock');
    await server.listenUnix(sock);
    const overlay = join(dir, 'overlay.qcow2');
    // The documented commands (docs/virtual-disks.md, "Instant boot").
    await promisify(execFile)('qemu-img', ['create', '-f', 'qcow2', '-b', nbdUnixUri(sock, 'pc@1'), '-F', 'raw', overlay]);
    let serial = '';
    vm = spawn('qemu-system-x86_64', ['-m', '64', '-nographic', '-machine', 'pc,graphics=off', '-no-reboot', '-net', 'none', '-drive', `file=${overlay},format=qcow2,if=ide`], { stdio: ['ignore', 'pipe', 'pipe'] });
    vm.stdout!.on('data', (b: Buffer) => (serial += b.toString('latin1')));
    vm.stderr!.on('data', (b: Buffer) => (serial += b.toString('latin1')));
    await until(() => serial.includes('W0') || vm!.exitCode !== null, 120_000, `the marker on the serial console (so far: ${JSON.stringify(serial.slice(-300))})`);
    expect(serial, serial).toContain(MARKER);
    expect(serial).toContain('W0'); // the BIOS write succeeded, into the overlay
    process.kill(vm.pid!, 'SIGTERM'); // a clean stop: qemu flushes the overlay's metadata
    await until(() => vm!.exitCode !== null || vm!.signalCode !== null, 20_000, 'qemu to stop');
    // The write landed in the overlay: LBA 1 reads as the boot sector there, and as zeros in the stored version.
    const { stdout } = await promisify(execFile)('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read -v 512 16', overlay]).catch((e: { stdout?: string; stderr?: string }) => ({ stdout: `${e.stdout ?? ''}${e.stderr ?? ''}` }));
    expect(stdout).toMatch(/00000200:\s+31 c0 8e d8/);
    const map = JSON.parse((await promisify(execFile)('qemu-img', ['map', '--output=json', overlay])).stdout) as { start: number; depth: number; data: boolean }[];
    expect(map.find((m) => m.start === 0)!.depth).toBe(0); // the written cluster is in the overlay
    await server.close();
    server = undefined;
    expect(treeDigest(store.root)).toBe(before);
  }, 180_000);
});
