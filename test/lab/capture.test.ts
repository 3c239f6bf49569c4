/**
 * Capture over the network in the namespace lab: a "master" machine's loop
 * device (GPT + ext4 with files) is captured, a few files change, it is
 * captured again (the second version must store under 10% new data), and
 * both versions are restored to two other machines and compared with the
 * master as it was at each capture. Then: a capture that survives the
 * server being killed, a mounted disk refused, and real read errors (FUSE)
 * recorded with --ignore-read-errors or stopping the capture without it.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { detachLoops, itNeeds, loopAttach, missing, ROOT, seeded, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';

const MiB = 1 << 20;
const ROOT_START = 18432 * 512;

describe('capture and restore over the network', () => {
  const dir = tempDir('capture');
  const data = join(dir, 'data');
  const master = join(dir, 'master.img');
  const snapshots: Buffer[] = [];
  let fleet: Fleet;

  const capture = (args: string[]) => fleet.run(['capture', ...args]);

  beforeAll(async () => {
    if (missing(['netns', 'loop', 'sgdisk', 'mkfs', 'curl']).length > 0) return;
    const files = join(dir, 'files');
    mkdirSync(join(files, 'docs'), { recursive: true });
    for (let i = 0; i < 24; i++) writeFileSync(join(files, `file${i}.bin`), seeded(MiB, 500 + i));
    writeFileSync(join(files, 'docs', 'readme.txt'), 'version one\n');
    execFileSync('truncate', ['-s', `${64 * MiB}`, master]);
    execFileSync('sgdisk', ['-n', '1:2048:+8M', '-t', '1:ef00', '-n', '2:0:0', '-t', '2:8300', master], { stdio: 'ignore' }); // (-q would make sgdisk write nothing to a blank disk)
    execFileSync('mkfs.ext4', ['-q', '-d', files, '-E', `offset=${ROOT_START}`, master, '54M']);
    fleet = new Fleet(dir, data, 3);
    fleet.devices[0] = loopAttach(master);
    for (let k = 1; k < 3; k++) fleet.disk(k, 72 * MiB);
    await fleet.startServer();
    for (let k = 0; k < 3; k++) fleet.startAgent(k);
    await until(async () => (await fleet.online()) === 3, 20_000, '3 agents online');
  }, 60_000);
  afterAll(() => {
    fleet?.down();
    detachLoops();
  });

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs', 'curl'], 'capture, change, capture: the second version stores under 10% new data; both restore exactly', async () => {
    // --raw until restore leaves unused chunks as they are (the byte-for-byte comparisons below need every byte).
    const c1 = capture([fleet.mac(0), 'master', '--raw']);
    expect(await c1.exited, c1.out).toBe(0);
    expect(c1.out).toMatch(/captured master@1 from/);
    snapshots.push(readFileSync(master));

    // Change a few files inside the filesystem (debugfs writes the image directly).
    writeFileSync(join(dir, 'new.txt'), 'version two\n');
    execFileSync('debugfs', ['-w', '-R', `write ${join(dir, 'new.txt')} /docs/changes.txt`, `${master}?offset=${ROOT_START}`], { stdio: 'ignore' });
    execFileSync('debugfs', ['-w', '-R', 'rm /file3.bin', `${master}?offset=${ROOT_START}`], { stdio: 'ignore' });
    spawnSync('blockdev', ['--flushbufs', fleet.devices[0]!]);
    // --raw: file3's blocks, now free, keep their bytes on the master; the byte-for-byte comparison below needs them.
    const c2 = capture([fleet.mac(0), 'master', '--raw']);
    expect(await c2.exited, c2.out).toBe(0);
    snapshots.push(readFileSync(master));
    expect(snapshots[1].equals(snapshots[0])).toBe(false);

    const caps = await fleet.api('GET', '/api/captures');
    const [second, first] = caps;
    console.log(`capture 1: ${first.result.newBytes} new bytes stored, ${first.received.bytes} sent; capture 2: ${second.result.newBytes} new bytes stored, ${second.received.bytes} sent, ${second.progress.reused} chunks already stored\n${c2.out}`);
    expect(second.result.newBytes).toBeLessThan(first.result.newBytes * 0.1);
    expect(second.progress.reused).toBeGreaterThan(10);

    const history = await fleet.api('GET', '/api/images');
    expect(history.find((i: any) => i.name === 'master').versions).toEqual([1, 2]);

    const r1 = fleet.deploy('master@1', ['--machines', fleet.mac(1)]);
    expect(await r1.exited, r1.out).toBe(0);
    const r2 = fleet.deploy('master@2', ['--machines', fleet.mac(2)]);
    expect(await r2.exited, r2.out).toBe(0);
    // Byte for byte but the protective MBR's size and the primary GPT header (LBA 0 and 1): the 72 MiB disks have the backup moved to their end.
    const same = (disk: Buffer, snap: Buffer) => disk.subarray(0, 446).equals(snap.subarray(0, 446)) && disk.subarray(1024, snap.length).equals(snap.subarray(1024));
    expect(same(readFileSync(fleet.diskPath(1)), snapshots[0])).toBe(true);
    expect(same(readFileSync(fleet.diskPath(2)), snapshots[1])).toBe(true);
    const cat = spawnSync('debugfs', ['-R', 'cat /docs/changes.txt', `${fleet.diskPath(2)}?offset=${ROOT_START}`], { encoding: 'utf8' });
    expect(cat.stdout).toBe('version two\n');
  }, 120_000);

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs', 'curl', 'partclone'], 'a used-block capture reads and sends only what the filesystems use', async () => {
    const c = capture([fleet.mac(0), 'used']);
    expect(await c.exited, c.out + fleet.agents[0]!.out.slice(-500)).toBe(0);
    const i = JSON.parse(execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'info', 'used', '--data', data, '--json'], { encoding: 'utf8' }));
    const cap = (await fleet.api('GET', '/api/captures')).find((x: any) => x.image === 'used');
    console.log(`used-block capture: disk ${i.meta.diskSize}, used ${i.usedBytes}, read ${cap.progress.bytesRead}, sent ${cap.progress.bytesSent}; ${i.unusedChunks} unused chunks`);
    expect(i.meta.partitions.map((p: any) => [p.fs, p.method])).toEqual([[null, 'full'], ['ext4', 'used-blocks']]);
    expect(i.unusedChunks).toBeGreaterThan(5); // the ext4's free space (file3, deleted, among it)
    expect(cap.progress.bytesRead).toBe((i.chunks - i.unusedChunks) * i.meta.chunkSize);
    expect(i.usedBytes).toBeLessThan(i.meta.diskSize);
    // The exported image holds a sound filesystem with the files as they are on the master.
    const out = join(dir, 'used.out');
    execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'export', 'used', out, '--data', data]);
    const fsck = spawnSync('e2fsck', ['-fn', loopAttach(out, ['-o', String(ROOT_START), '--sizelimit', String(54 * MiB)])], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const dumped = join(dir, 'file5.out');
    const cat = spawnSync('debugfs', ['-R', `dump /file5.bin ${dumped}`, `${out}?offset=${ROOT_START}`], { encoding: 'utf8' });
    expect(existsSync(dumped), cat.stderr).toBe(true);
    expect(readFileSync(dumped).equals(seeded(MiB, 505)), `${readFileSync(dumped).length} bytes`).toBe(true);
  }, 60_000);

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs', 'curl'], 'a capture of selected partitions stores the rest as absent', async () => {
    const c = capture([fleet.mac(0), 'rootfs', '--partitions', '2']);
    expect(await c.exited, c.out + fleet.agents[0]!.out.slice(-500)).toBe(0);
    const info = execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'info', 'rootfs', '--data', data, '--json'], { encoding: 'utf8' });
    const i = JSON.parse(info);
    expect(i.absentChunks).toBeGreaterThan(5); // the 8 MiB ESP, chunk 0 excepted (the tables)
    // Inside the chosen partition only what the ext4 uses was read; the record names that partition only.
    expect(i.meta.partitions.map((p: any) => [p.fs, p.method])).toEqual([['ext4', 'used-blocks']]);
    expect(i.unusedChunks).toBeGreaterThan(5);
    expect(i.usedBytes).toBeLessThan(i.meta.partitionTable.partitions[1].size + 2 * MiB);
    expect(i.meta.partitionTable.scheme).toBe('gpt');
  }, 60_000);

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs', 'curl'], 'a capture survives the server being killed and restarted', async () => {
    // A bigger, incompressible disk on machine 1 so that the capture takes a while.
    writeFileSync(fleet.diskPath(1), seeded(96 * MiB, 77));
    const c = capture([fleet.mac(1), 'big']);
    let seen: any;
    await until(async () => {
      const caps = await fleet.api('GET', '/api/captures').catch(() => []);
      seen = caps[0];
      return seen?.image === 'big' && (seen.received.chunks >= 3 || seen.state !== 'running');
    }, 30_000, 'the capture to be under way');
    expect(seen.state, 'the capture should still run when the server is killed').toBe('running');
    fleet.server!.child.kill('SIGKILL');
    await fleet.server!.exited;
    await fleet.startServer();
    expect(await c.exited, c.out).toBe(0);
    const out = join(dir, 'big.out');
    execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'export', 'big', out, '--data', data]);
    expect(readFileSync(out).equals(readFileSync(fleet.diskPath(1)))).toBe(true);
    const v = execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'verify', 'big', '--data', data], { encoding: 'utf8' });
    expect(v).toMatch(/all sound/);
  }, 120_000);

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs', 'curl'], 'two captures of one image never run at once', async () => {
    const first = await fleet.api('POST', '/api/captures', { machine: fleet.mac(1), image: 'twice' });
    const second = await fleet.api('POST', '/api/captures', { machine: fleet.mac(0), image: 'twice' });
    expect(second.error?.message ?? '').toMatch(new RegExp(`capture ${first.id} of "twice" .* is still running; captures of one image never run at once`));
    await until(async () => (await fleet.api('GET', `/api/captures/${first.id}`)).state !== 'running', 30_000, 'the first capture to end');
    expect((await fleet.api('GET', `/api/captures/${first.id}`)).state).toBe('done');
  }, 60_000);

  itNeeds(['netns', 'loop', 'mkfs', 'curl'], 'a mounted disk is refused with the reason', async () => {
    const file = join(dir, 'mounted.img');
    execFileSync('truncate', ['-s', `${16 * MiB}`, file]);
    execFileSync('mkfs.ext4', ['-q', file]);
    const loop = loopAttach(file);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [loop, mnt]);
    try {
      fleet.agents[2]!.child.kill('SIGTERM');
      await fleet.agents[2]!.exited;
      fleet.devices[2] = loop;
      fleet.startAgent(2);
      await until(async () => (await fleet.online()) === 3, 20_000, 'agent 2 back');
      const c = capture([fleet.mac(2), 'mounted']);
      expect(await c.exited).toBe(1);
      expect(c.out).toMatch(/refusing to capture \/dev\/loop\d+: .*mounted.*inconsistent/);
      const images = await fleet.api('GET', '/api/images');
      expect(images.map((i: any) => i.name)).not.toContain('mounted');
    } finally {
      spawnSync('umount', [mnt]);
    }
  }, 60_000);

  itNeeds(['netns', 'fuse', 'curl'], 'read errors: recorded as bad ranges with --ignore-read-errors, else the capture stops and publishes nothing', async () => {
    const backing = join(dir, 'failing.img');
    writeFileSync(backing, seeded(4 * MiB, 33));
    const mnt = join(dir, 'eio');
    mkdirSync(mnt, { recursive: true });
    const fuse: ChildProcess = spawn('/usr/bin/python3', [join(ROOT, 'test/fixtures/eio-fs.py'), backing, mnt, `${MiB + 512}:1024`], { stdio: 'ignore' });
    try {
      await until(() => existsSync(join(mnt, 'disk.img')), 10_000, 'the FUSE file');
      fleet.agents[2]!.child.kill('SIGTERM');
      await fleet.agents[2]!.exited;
      fleet.devices[2] = join(mnt, 'disk.img');
      fleet.startAgent(2);
      await until(async () => (await fleet.online()) === 3, 20_000, 'agent 2 back');
      const stop = capture([fleet.mac(2), 'failing']);
      expect(await stop.exited).toBe(1);
      expect(stop.out).toMatch(/read error \(EIO\) at byte 1049088/);
      expect((await fleet.api('GET', '/api/images')).map((i: any) => i.name)).not.toContain('failing');
      const ok = capture([fleet.mac(2), 'failing', '--ignore-read-errors']);
      expect(await ok.exited, ok.out).toBe(0);
      expect(ok.out).toMatch(/1 unreadable range\(s\) stored as zeros/);
      const info = JSON.parse(execFileSync(process.execPath, [join(ROOT, 'bin/clonecast'), 'image', 'info', 'failing', '--data', data, '--json'], { encoding: 'utf8' }));
      expect(info.meta.badRanges).toEqual([{ offset: MiB + 512, length: 1024 }]);
    } finally {
      spawnSync('umount', [mnt]);
      fuse.kill();
    }
  }, 60_000);
});
