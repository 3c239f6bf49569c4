import { describe, expect, beforeAll } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { Store } from '../../server/store/store.js';
import { exportImage } from '../../server/store/export.js';
import { exportVirtual } from '../../server/store/export-virtual.js';
import { importAny, serveWithQemuNbd } from '../../server/store/import-virtual.js';
import { importImage } from '../../server/store/import.js';
import { cli, itNeeds, seeded, tempDir, texty } from '../helpers.js';

const run = promisify(execFile);
const qemuImg = async (...args: string[]) => (await run('qemu-img', args)).stdout;
const C = 64 << 10;
const MiB = 1 << 20;
let dir: string;
let store: Store;
let raw1: string;
let raw2: string;

/** Writes buf at offset of an existing file. */
function patch(file: string, offset: number, buf: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, buf, 0, buf.length, offset);
  } finally {
    closeSync(fd);
  }
}

beforeAll(async () => {
  dir = tempDir('vdisk');
  store = Store.open(join(dir, 'data'));
  // 8 MiB: data at 0-1 MiB and 5-6 MiB, the rest zero. Version 2 changes 64 KiB at 5 MiB and zeroes 0.5-1 MiB.
  raw1 = join(dir, 'v1.raw');
  writeFileSync(raw1, Buffer.alloc(0));
  truncateSync(raw1, 8 * MiB);
  patch(raw1, 0, seeded(MiB, 11));
  patch(raw1, 5 * MiB, texty(MiB, 12)); // compressible, for --compress
  raw2 = join(dir, 'v2.raw');
  writeFileSync(raw2, readFileSync(raw1));
  patch(raw2, 5 * MiB, seeded(C, 13));
  patch(raw2, MiB / 2, Buffer.alloc(MiB / 2));
  if ((await import('../helpers.js')).missing(['qemu-utils']).length > 0) return;
  await importAny(store, raw1, 'pc', { chunkSize: C, workers: 2 });
  await importAny(store, raw2, 'pc', { chunkSize: C, workers: 2 });
});

describe('virtual disk export and import through qemu-img and NBD', () => {
  itNeeds(['qemu-utils'], 'round trips: raw -> qcow2, vmdk, vhdx, vdi, vpc -> qemu-img check -> qemu-img compare with the raw export', async () => {
    const rawOut = join(dir, 'pc2.raw');
    await exportImage(store, { name: 'pc', version: 2 }, rawOut, { workers: 2 });
    expect(readFileSync(rawOut).equals(readFileSync(raw2))).toBe(true);
    for (const format of ['qcow2', 'vmdk', 'vhdx', 'vdi', 'vpc'] as const) {
      const out = join(dir, `pc2.${format}`);
      const s = await exportVirtual(store, { name: 'pc', version: 2 }, out, { format });
      expect(s.format).toBe(format);
      // Only data chunks are decoded: 1.5 MiB + 1 MiB of 8.
      expect(s.bytesDecoded).toBe(MiB / 2 + MiB);
      if (format !== 'vpc') expect(await qemuImg('check', '-f', format, out)).toContain('No errors were found');
      expect(await qemuImg('compare', '-f', format, '-F', 'raw', out, rawOut)).toContain('Images are identical');
      const back = await importAny(store, out, 'back', { chunkSize: C, workers: 2 });
      expect(back.format).toBe(format);
      expect(back.newBytes).toBe(0); // every chunk was already stored
      // Holes were not read: exactly the data for qcow2 (64 KiB clusters); formats with bigger blocks or grain tables read whole blocks.
      if (format === 'qcow2') expect(back.bytesReadOverNbd).toBe(MiB / 2 + MiB);
      else expect(back.bytesReadOverNbd).toBeLessThanOrEqual(8 * MiB);
    }
    const c = await exportVirtual(store, { name: 'pc', version: 2 }, join(dir, 'pc2c.qcow2'), { format: 'qcow2', compress: true });
    expect(await qemuImg('compare', join(dir, 'pc2c.qcow2'), rawOut)).toContain('Images are identical');
    expect(await qemuImg('check', join(dir, 'pc2c.qcow2'))).toMatch(/[1-9][0-9.]*% compressed clusters/);
    expect(c.fileBytes).toBeLessThan(statSync(join(dir, 'pc2.qcow2')).blocks * 512);
  });

  itNeeds(['qemu-utils'], 'a backing-overlay export of @2 over @1 compares identical to @2 and is much smaller than a full export', async () => {
    const base = join(dir, 'pc1.qcow2');
    await exportVirtual(store, { name: 'pc', version: 1 }, base, { format: 'qcow2' });
    const overlay = join(dir, 'pc2-over-1.qcow2');
    const s = await exportVirtual(store, { name: 'pc', version: 2 }, overlay, { format: 'qcow2', backing: { ref: { name: 'pc', version: 1 }, file: base } });
    expect(s.backing).toBe('pc1.qcow2');
    const info = JSON.parse(await qemuImg('info', '--output=json', overlay));
    expect(info['backing-filename']).toBe('pc1.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    expect(await qemuImg('check', overlay)).toContain('No errors were found');
    expect(await qemuImg('compare', '-F', 'raw', overlay, raw2)).toContain('Images are identical');
    // Only the changed chunk's data is decoded and written: 64 KiB (the zeroed half-MiB is zero clusters).
    expect(s.bytesDecoded).toBe(C);
    const full = statSync(join(dir, 'pc2.qcow2')).blocks * 512;
    expect(s.fileBytes * 4).toBeLessThan(full);
    // A wrong base file is refused.
    await expect(exportVirtual(store, { name: 'pc', version: 2 }, join(dir, 'bad.qcow2'), { format: 'qcow2', backing: { ref: { name: 'pc', version: 1 }, file: await smallQcow2() } })).rejects.toThrow(/not an export of that version/);
  });

  itNeeds(['qemu-utils'], '--backing does not trust a probe: a raw export of a disk that begins with a qcow2 header naming a data file is refused, and so is an unrelated file of the right size', async () => {
    const att = join(dir, 'att');
    mkdirSync(att);
    const secret = join(att, 'secret');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${secret},data_file_raw=on`, join(att, 'head.qcow2'), '8M');
    writeFileSync(secret, Buffer.alloc(8 * MiB, 's'));
    // A disk the attacker controls: its first bytes are that qcow2 header; version 2 changes 7 bytes at 7 MiB.
    const d1 = join(att, 'd1.raw');
    writeFileSync(d1, Buffer.alloc(0));
    truncateSync(d1, 8 * MiB);
    patch(d1, 0, readFileSync(join(att, 'head.qcow2')));
    const d2 = join(att, 'd2.raw');
    writeFileSync(d2, readFileSync(d1));
    patch(d2, 7 * MiB, Buffer.from('changed'));
    await importImage(store, d1, 'att', { chunkSize: C, workers: 1 });
    await importImage(store, d2, 'att', { chunkSize: C, workers: 1 });
    const u = join(att, 'U.raw');
    await exportVirtual(store, { name: 'att', version: 1 }, u, { format: 'raw' });
    const over = () => exportVirtual(store, { name: 'att', version: 2 }, join(att, 'v.qcow2'), { format: 'qcow2', force: true, backing: { ref: { name: 'att', version: 1 }, file: u } });
    // Probed, U.raw is a qcow2 whose data is the secret: the overlay used to record backing format qcow2.
    await expect(over()).rejects.toThrow(/names other files .*secret/);
    // Named as raw, it is exactly att@1: the overlay records raw and reads back as att@2.
    const s = await exportVirtual(store, { name: 'att', version: 2 }, join(att, 'v.qcow2'), { format: 'qcow2', force: true, backing: { ref: { name: 'att', version: 1 }, file: u, format: 'raw' } });
    expect(s.backing).toBe('U.raw');
    expect(JSON.parse(await qemuImg('info', '--output=json', join(att, 'v.qcow2')))['backing-filename-format']).toBe('raw');
    await qemuImg('compare', '-q', '-f', 'qcow2', '-F', 'raw', join(att, 'v.qcow2'), d2);
    // An unrelated file of the right size is not an export of att@1.
    const other = join(att, 'other.raw');
    writeFileSync(other, seeded(8 * MiB, 99));
    await expect(exportVirtual(store, { name: 'att', version: 2 }, join(att, 'w.qcow2'), { format: 'qcow2', backing: { ref: { name: 'att', version: 1 }, file: other, format: 'raw' } })).rejects.toThrow(/not the same disk as att@1/);
  });

  itNeeds(['qemu-utils'], 'qemu-nbd failing to open the image is reported with what it said, not as "cannot connect", and its temp folder is removed', async () => {
    const tmp = join(dir, 'nbdtmp');
    mkdirSync(tmp);
    const old = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    try {
      // A raw file opened as qcow2: qemu-nbd makes its socket, then fails to open the image.
      await expect(serveWithQemuNbd(raw1, 'qcow2')).rejects.toThrow(/qemu-nbd could not serve .*v1\.raw as qcow2: .*qcow2/);
    } finally {
      if (old === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = old;
    }
    expect(readdirSync(tmp)).toEqual([]);
  });

  itNeeds(['qemu-utils'], 'a qcow2 with a backing chain made by qemu-img imports and exports byte for byte; onto its base image it stores only the changed chunks', async () => {
    const chainDir = join(dir, 'chain');
    mkdirSync(chainDir);
    const base = join(chainDir, 'base.qcow2');
    await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw1, base);
    const mid = join(chainDir, 'mid.qcow2');
    const top = join(chainDir, 'top.qcow2');
    await qemuImg('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid);
    await run('qemu-io', ['-c', `write -P 0x5a ${3 * MiB} ${C}`, mid]);
    await qemuImg('create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top);
    await run('qemu-io', ['-c', `write -P 0xa5 ${7 * MiB} ${C}`, '-c', `write -P 0xa6 ${7 * MiB + C} ${C}`, top]);
    const first = await importAny(store, base, 'vm', { chunkSize: C, workers: 2 });
    const s = await importAny(store, top, 'vm', { chunkSize: C, workers: 2 });
    expect(s.chain!.map((l) => l.path)).toEqual([top, mid, base]);
    // Three changed chunks: one in mid, two in top; everything else was already stored by vm@1.
    expect(s.dataChunks - s.reusedChunks).toBe(3);
    expect(s.newBytes).toBeGreaterThan(0);
    expect(first.newBytes).toBe(0); // the base is pc@1's disk: all its chunks were stored already
    expect(s.newBytes).toBeLessThanOrEqual(3 * (C + 24));
    const out = join(dir, 'vm2.raw');
    await exportImage(store, { name: 'vm', version: 2 }, out, {});
    expect(await qemuImg('compare', '-F', 'raw', top, out)).toContain('Images are identical');
  });

  itNeeds(['qemu-utils'], 'block status is honoured: a mostly-zero 4 GiB version converts reading only its data chunks, both ways', async () => {
    const big = join(dir, 'big.raw');
    writeFileSync(big, Buffer.alloc(0));
    truncateSync(big, 4 * 1024 * MiB);
    patch(big, 3000 * MiB, seeded(MiB, 21));
    const imp = await importAny(store, big, 'big', { workers: 2 });
    expect(imp.dataChunks).toBe(1);
    const out = join(dir, 'big.qcow2');
    const s = await exportVirtual(store, { name: 'big' }, out, { format: 'qcow2' });
    expect(s.bytesDecoded).toBe(MiB);
    expect(JSON.parse(await qemuImg('info', '--output=json', out))['virtual-size']).toBe(4 * 1024 * MiB);
    const back = await importAny(store, out, 'big2', { workers: 2 });
    expect(back.bytesReadOverNbd).toBe(MiB);
    expect(back.dataChunks).toBe(1);
  });

  itNeeds(['qemu-utils'], 'hostile qemu-img info is refused: a backing file outside the folder, a URL backing file, an absurd virtual size', async () => {
    const evil = join(dir, 'evil');
    mkdirSync(evil);
    await qemuImg('create', '-f', 'qcow2', '-b', raw1, '-F', 'raw', join(evil, 'outside.qcow2'));
    await expect(importAny(store, join(evil, 'outside.qcow2'), 'evil')).rejects.toThrow(/outside .*--allow-backing-outside/);
    const ok = await importAny(store, join(evil, 'outside.qcow2'), 'evil', { allowBackingOutside: true, chunkSize: C });
    expect(ok.newBytes).toBe(0);
    await qemuImg('create', '-f', 'qcow2', '-u', '-b', 'nbd://10.77.0.1/secret', '-F', 'raw', join(evil, 'url.qcow2'), '1G');
    await expect(importAny(store, join(evil, 'url.qcow2'), 'evil')).rejects.toThrow(/not a local file/);
    await qemuImg('create', '-f', 'qcow2', join(evil, 'huge.qcow2'), '100T');
    await expect(importAny(store, join(evil, 'huge.qcow2'), 'evil')).rejects.toThrow(/virtual size/);
    expect(store.versions('evil')).toEqual([1]);
  });

  itNeeds(['qemu-utils'], 'a hostile VMDK extent or qcow2 data file naming a file elsewhere (a secret, a disk) is refused, not imported', async () => {
    const secretDir = join(dir, 'secret');
    const evil = join(dir, 'evil-extent');
    mkdirSync(secretDir);
    mkdirSync(evil);
    const secret = join(secretDir, 'key.bin');
    writeFileSync(secret, Buffer.concat([Buffer.from('TOP-SECRET-SERVER-KEY\n'), Buffer.alloc(MiB - 22)]));
    const descriptor = (extent: string) => `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "${extent}" 0\n`;
    writeFileSync(join(evil, 'disk.vmdk'), descriptor(secret));
    await expect(importAny(store, join(evil, 'disk.vmdk'), 'stolen')).rejects.toThrow(/data file outside/);
    writeFileSync(join(evil, 'dev.vmdk'), descriptor('/dev/zero'));
    await expect(importAny(store, join(evil, 'dev.vmdk'), 'stolen')).rejects.toThrow(/not a regular file/);
    // A qcow2 whose external data file is the secret.
    const copy = join(evil, 'data.bin');
    writeFileSync(copy, readFileSync(secret));
    await qemuImg('create', '-f', 'qcow2', '-o', `data_file=${copy},data_file_raw=on`, join(evil, 'ext.qcow2'), '1M');
    await qemuImg('amend', '-f', 'qcow2', '-o', `data_file=${secret}`, join(evil, 'ext.qcow2'));
    await expect(importAny(store, join(evil, 'ext.qcow2'), 'stolen')).rejects.toThrow(/data file outside/);
    // A relative data file name is opened by qemu from the importer's current folder, not the image's:
    // a decoy beside the image would pass a check made there while a file elsewhere is read. Refused.
    writeFileSync(join(evil, 'decoy.bin'), Buffer.alloc(MiB, 0x61));
    await run('qemu-img', ['create', '-f', 'qcow2', '-o', 'data_file=decoy.bin,data_file_raw=on', 'rel.qcow2', '1M'], { cwd: evil });
    await expect(importAny(store, join(evil, 'rel.qcow2'), 'stolen')).rejects.toThrow(/data file "decoy.bin" is named relative/);
    expect(store.versions('stolen')).toEqual([]);
    // An extent beside the descriptor (a split VMDK) is what such files normally are: imported.
    writeFileSync(join(evil, 'beside.vmdk'), descriptor('data.bin'));
    const ok = await importAny(store, join(evil, 'beside.vmdk'), 'split', { chunkSize: C });
    expect(ok.diskSize).toBe(MiB);
  });

  itNeeds(['qemu-utils'], 'the CLI says what to install when qemu-img is missing', async () => {
    const r = await cli(['image', 'export', 'pc@2', join(dir, 'x.qcow2'), '--data', join(dir, 'data')], { PATH: join(dir, 'no-such-bin') });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('apt-get install qemu-utils');
  });
});

let tiny: string | undefined;
async function smallQcow2(): Promise<string> {
  tiny ??= join(dir, 'tiny.qcow2');
  await qemuImg('create', '-f', 'qcow2', tiny, '1M');
  return tiny;
}
