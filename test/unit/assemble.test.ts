/**
 * image assemble: two source disks made here (a GPT with an ESP and an ext4
 * root; an MBR with an unaligned data partition and an aligned one),
 * imported, assembled into new disks and exported to check them with
 * sgdisk, sfdisk and e2fsck.
 */
import { beforeAll, describe, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { assembleImage, type AssembleSummary } from '../../server/store/assemble.js';
import { parsePartSpec } from '../../server/store/assemble-plan.js';
import { chunkAt, ChunkKind, setChunk, type Manifest } from '../../protocol/manifest.js';
import { isError, ERR } from '../../protocol/errors.js';
import { cli, itNeeds, seeded, serverFetch, tempDir, texty } from '../helpers.js';
import { startServer } from '../../server/app.js';

const MiB = 1 << 20;
const NEEDS = ['sgdisk', 'sfdisk', 'mkfs'];
const align = (x: number) => Math.ceil(x / MiB) * MiB;
const BACKUP = 33 * 512;

function put(file: string, at: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, at);
  } finally {
    closeSync(fd);
  }
}

function range(file: string, at: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, buf, 0, length, at);
  } finally {
    closeSync(fd);
  }
  return buf;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const specs = (...s: string[]) => s.map(parsePartSpec);

describe('image assemble', () => {
  let dir: string;
  let store: Store;
  let a: string;
  let b: string;
  // Source partitions: [start, size] in bytes.
  const A1 = [MiB, 16 * MiB];
  const A2 = [17 * MiB, (131038 - 34816 + 1) * 512];
  const B1 = [63 * 512, 20417 * 512];
  const B2 = [11 * MiB, 20 * MiB];

  beforeAll(() => {
    if (process.env.CLONECAST_REQUIRE_ALL !== '1' && spawnSync('sh', ['-c', 'command -v sgdisk && command -v sfdisk && command -v mkfs.ext4']).status !== 0) return;
    dir = tempDir('assemble');
    store = Store.open(join(dir, 'data'));
    // Source A: GPT, ESP (data at its start) and an ext4 root with files.
    a = join(dir, 'a.img');
    writeFileSync(a, '');
    execFileSync('truncate', ['-s', '64M', a]);
    execFileSync('sgdisk', ['-n1:2048:+16M', '-t1:ef00', '-c1:ESP', '-n2:0:0', '-t2:8300', '-c2:root', a], { stdio: 'ignore' });
    put(a, A1[0], texty(3 * MiB, 1));
    const rootDir = join(dir, 'rootfs');
    mkdirSync(join(rootDir, 'etc'), { recursive: true });
    writeFileSync(join(rootDir, 'etc', 'marker'), 'assembled root\n');
    writeFileSync(join(rootDir, 'blob'), seeded(2 * MiB, 2));
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', rootDir, '-E', `offset=${A2[0]}`, a, `${Math.floor(A2[1] / 1024)}K`], { stdio: 'ignore' });
    // Source B: MBR, partition 1 at sector 63 (not chunk-aligned), partition 2 at 11 MiB.
    b = join(dir, 'b.img');
    writeFileSync(b, '');
    execFileSync('truncate', ['-s', '48M', b]);
    execFileSync('sfdisk', ['-q', b], { input: 'label: dos\nstart=63, size=20417, type=83\nstart=22528, size=40960, type=7, bootable\n' });
    put(b, B1[0], seeded(B1[1], 3));
    put(b, B2[0], texty(8 * MiB, 4));
  }, 120_000);

  const importBoth = async () => {
    await importImage(store, a, 'srca', { workers: 2 });
    await importImage(store, b, 'srcb', { workers: 2 });
  };

  itNeeds(NEEDS, 'copies every partition exactly under a fresh GPT, no larger than needed; sgdisk -v and e2fsck -fn are clean', async () => {
    await importBoth();
    const s = await assembleImage(store, 'pc', specs('srca:1', 'srcb:1', 'srca:2', 'srcb:2'));
    const starts = [MiB];
    starts.push(align(starts[0] + A1[1]));
    starts.push(align(starts[1] + B1[1]));
    starts.push(align(starts[2] + A2[1]));
    const expectedSize = starts[3] + B2[1] + BACKUP;
    expect(s.diskSize).toBe(expectedSize);
    const out = join(dir, 'pc.img');
    await exportImage(store, { name: 'pc' }, out);
    expect(readFileSync(out).length).toBe(expectedSize);
    const v = spawnSync('sgdisk', ['-v', out], { encoding: 'utf8' });
    expect(v.stdout).toContain('No problems found');
    // Each partition's bytes are its source partition's bytes.
    const sources: [string, number[]][] = [[a, A1], [b, B1], [a, A2], [b, B2]];
    sources.forEach(([file, [start, size]], i) => {
      expect(s.table.partitions[i]).toMatchObject({ start: starts[i], size });
      expect(sha(range(out, starts[i], size)), `partition ${i + 1}`).toBe(sha(range(file, start, size)));
    });
    // Types mapped from the MBR, names kept from the GPT, GUIDs fresh.
    expect(s.table.partitions.map((p) => p.type)).toEqual(['c12a7328-f81f-11d2-ba4b-00a0c93ec93b', '0fc63daf-8483-4772-8e79-3d69d8477de4', '0fc63daf-8483-4772-8e79-3d69d8477de4', 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7']);
    expect(s.table.partitions.map((p) => p.name)).toEqual(['ESP', '', 'root', '']);
    expect(s.table.partitions[3].attributes).toBe('0000000000000004'); // the MBR boot flag as Legacy BIOS Bootable
    const srcA = (await store.readManifest('srca', 1)).meta.partitionTable;
    const srcB = (await store.readManifest('srcb', 1)).meta.partitionTable;
    const old = new Set([srcA.diskId, srcB.diskId, ...srcA.partitions.map((p) => p.uuid)]);
    for (const id of [s.table.diskId, ...s.table.partitions.map((p) => p.uuid)]) {
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(old.has(id)).toBe(false);
    }
    expect(execFileSync('sgdisk', ['-p', out], { encoding: 'utf8' })).toContain(s.table.diskId!.toUpperCase());
    // The root filesystem, checked where it now lies.
    const root = join(dir, 'root.img');
    writeFileSync(root, range(out, starts[2], A2[1]));
    const fsck = spawnSync('e2fsck', ['-fn', root], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    expect(execFileSync('debugfs', ['-R', 'cat /etc/marker', root], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toBe('assembled root\n');
    // Sources recorded; the unaligned partition was re-chunked from decoded source chunks.
    const m = await store.readManifest('pc', s.version);
    expect(m.meta.assembledFrom!.map((x) => [x.image, x.version, x.partition, x.start, x.length])).toEqual([
      ['srca', 1, 1, starts[0], A1[1]],
      ['srcb', 1, 1, starts[1], B1[1]],
      ['srca', 1, 2, starts[2], A2[1]],
      ['srcb', 1, 2, starts[3], B2[1]],
    ]);
    expect(s.bytesRead).toBeGreaterThanOrEqual(B1[1]);
  }, 120_000);

  itNeeds(NEEDS, 'reuses the chunk records of aligned partitions: only the table chunks are new', async () => {
    const s: AssembleSummary = await assembleImage(store, 'aligned', specs('srca:1', 'srca:2', 'srcb:2'));
    // Whole chunks inside the partitions: 16 of the ESP, 46 of the root (its last chunk is partial), 20 of B2.
    expect(s.reusedChunks).toBe(16 + Math.floor(A2[1] / MiB) + 20);
    expect(s.builtChunks).toBeLessThanOrEqual(3);
    expect(s.bytesRead).toBeLessThan(MiB);
    expect(s.newBytes).toBeLessThan(64 << 10);
    const m = await store.readManifest('aligned', s.version);
    const src = await store.readManifest('srca', 1);
    for (let j = 17; j < 17 + Math.floor(A2[1] / MiB); j++) {
      const target = Math.floor((s.table.partitions[1].start - 17 * MiB) / MiB) + j;
      expect(chunkAt(m.table, target).sha256.equals(chunkAt(src.table, j).sha256)).toBe(true);
    }
    const out = join(dir, 'aligned.img');
    await exportImage(store, { name: 'aligned' }, out);
    expect(spawnSync('sgdisk', ['-v', out], { encoding: 'utf8' }).stdout).toContain('No problems found');
    expect(sha(range(out, s.table.partitions[1].start, A2[1]))).toBe(sha(range(a, A2[0], A2[1])));
  }, 120_000);

  itNeeds(NEEDS, 'writes an MBR on request (types mapped back, boot flag kept) and grows the last partition to --size', async () => {
    const s = await assembleImage(store, 'mbr', specs('srcb:2', 'srca:2'), { table: 'mbr', size: 200 * MiB, growLast: true });
    expect(s.diskSize).toBe(200 * MiB);
    const out = join(dir, 'mbr.img');
    await exportImage(store, { name: 'mbr' }, out);
    const j = JSON.parse(execFileSync('sfdisk', ['-J', out], { encoding: 'utf8' })).partitiontable;
    expect(j.label).toBe('dos');
    expect(j.partitions.map((p: { type: string; bootable?: boolean }) => [p.type, p.bootable === true])).toEqual([['7', true], ['83', false]]);
    const last = s.table.partitions[1];
    expect(last.start + last.size).toBe(200 * MiB);
    expect(sha(range(out, last.start, A2[1]))).toBe(sha(range(a, A2[0], A2[1])));
    expect(range(out, last.start + A2[1], 200 * MiB - last.start - A2[1]).every((x) => x === 0)).toBe(true);
    expect(s.table.diskId).not.toBe((await store.readManifest('srcb', 1)).meta.partitionTable.diskId);
  }, 120_000);

  itNeeds(NEEDS, 'refuses typos and impossible layouts before making anything', async () => {
    const before = store.versions('bad').length;
    const fails = async (p: Promise<unknown>, code: string, text: RegExp) => {
      const err = await p.then(() => null, (e: unknown) => e);
      expect(isError(err, code), String(err)).toBe(true);
      expect((err as Error).message).toMatch(text);
    };
    await fails(assembleImage(store, 'bad', specs('srca:3')), ERR.NOT_FOUND, /srca@1 has no partition 3: its gpt table lists 1 \(EFI System "ESP", 16\.0 MiB\), 2 \(Linux filesystem "root"/);
    await fails(assembleImage(store, 'bad', specs('srcc:1')), ERR.NOT_FOUND, /no image named "srcc"/);
    await fails(assembleImage(store, 'bad', specs('srca@9:1')), ERR.NOT_FOUND, /has no version 9/);
    await fails(assembleImage(store, 'bad', specs('srca:1', 'srca:1')), ERR.USAGE, /named twice/);
    await fails(assembleImage(store, 'bad', specs('srca:1'), { size: 2 * MiB }), ERR.USAGE, /smaller than the/);
    await fails(assembleImage(store, 'bad', specs('srca:1'), { growLast: true }), ERR.USAGE, /--grow-last/);
    await fails(assembleImage(store, 'bad', specs('srca:1', 'srca:2', 'srcb:1', 'srcb:2', 'aligned:1'), { table: 'mbr' }), ERR.PARTITION_TABLE, /more than the 4 primary/);
    expect(() => parsePartSpec('srca')).toThrow(/IMAGE\[@V\]:N/);
    expect(() => parsePartSpec('srca:0')).toThrow(/IMAGE\[@V\]:N/);
    expect(() => parsePartSpec('../x:1')).toThrow(/not a valid image name/);
    expect(store.versions('bad').length).toBe(before);
  }, 120_000);

  itNeeds(NEEDS, 'an absurd --size (2^44 bytes) is refused at once, not planned chunk by chunk in memory', async () => {
    const before = store.versions('huge').length;
    const err = await assembleImage(store, 'huge', specs('srca:1'), { size: 2 ** 44 }).then(() => null, (e: unknown) => e);
    expect(isError(err, ERR.USAGE), String(err)).toBe(true);
    expect((err as Error).message).toMatch(/larger than the .* an assembled disk may have/);
    expect(store.versions('huge').length).toBe(before);
  });

  itNeeds(NEEDS, 'partitions that add up to more than an assembled disk may hold are refused without --size too', async () => {
    // Two stored versions with 16 MiB chunks, each a 9 TiB disk holding one 8.5 TiB partition (all zero
    // chunks: nothing is read before the plan refuses): 17 TiB is over 2^20 chunks of 16 MiB.
    const chunkSize = 16 << 20;
    const diskSize = 9 * 2 ** 40;
    const src: Manifest = await store.readManifest('srca', 1);
    for (const name of ['big1', 'big2']) {
      const n = diskSize / chunkSize;
      const meta = { ...src.meta, name, diskSize, chunkSize, partitionTable: { ...src.meta.partitionTable, partitions: [{ ...src.meta.partitionTable.partitions[1], number: 1, start: 1 << 20, size: 8.5 * 2 ** 40 }] } };
      store.publish({ meta, table: Buffer.alloc(n * 48) });
    }
    const err = await assembleImage(store, 'toobig', specs('big1:1', 'big2:1')).then(() => null, (e: unknown) => e);
    expect(isError(err, ERR.USAGE), String(err)).toBe(true);
    expect((err as Error).message).toMatch(/larger than the .* an assembled disk may have/);
    expect(store.versions('toobig')).toEqual([]);
  });

  itNeeds(NEEDS, 'refuses a source whose table puts a partition beyond its disk (a forged manifest)', async () => {
    const m: Manifest = await store.readManifest('srcb', 1);
    m.meta.partitionTable.partitions[1].size = 1 << 40;
    store.publish({ meta: { ...m.meta, name: 'forged' }, table: m.table });
    const err = await assembleImage(store, 'bad', specs('forged:2')).then(() => null, (e: unknown) => e);
    expect(isError(err, ERR.PARTITION_TABLE), String(err)).toBe(true);
    // A GPT record with attributes that are not hex, a name too long for an entry, a type that is no GUID.
    const g: Manifest = await store.readManifest('srca', 1);
    g.meta.partitionTable.partitions[0].attributes = 'zz';
    g.meta.partitionTable.partitions[1].name = 'n'.repeat(40);
    store.publish({ meta: { ...g.meta, name: 'forged' }, table: g.table });
    const e1 = await assembleImage(store, 'bad', specs('forged:1')).then(() => null, (e: unknown) => e);
    expect(isError(e1, ERR.PARTITION_TABLE), String(e1)).toBe(true);
    const e2 = await assembleImage(store, 'bad', specs('forged:2')).then(() => null, (e: unknown) => e);
    expect(isError(e2, ERR.PARTITION_TABLE), String(e2)).toBe(true);
    expect((e2 as Error).message).toMatch(/longer than 36/);
    g.meta.partitionTable.partitions[1].type = 'Linux; rm -rf /';
    store.publish({ meta: { ...g.meta, name: 'forged' }, table: g.table });
    const e3 = await assembleImage(store, 'bad', specs('forged:2')).then(() => null, (e: unknown) => e);
    expect(isError(e3, ERR.USAGE), String(e3)).toBe(true);
    expect((e3 as Error).message).toMatch(/no GPT equivalent/);
    expect(store.versions('bad')).toEqual([]);
  });

  itNeeds(NEEDS, 'keeps UNUSED and ABSENT where a whole re-chunked chunk is so; zeros where they meet data', async () => {
    // srcb@1's partition 1 starts 32256 bytes into chunk 0, so target chunk k holds source chunks k and k+1.
    const m = await store.readManifest('srcb', 1);
    const none = { compression: 0 as const, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) };
    for (const j of [2, 3, 4]) setChunk(m.table, j, { ...none, kind: ChunkKind.UNUSED });
    setChunk(m.table, 5, { ...none, kind: ChunkKind.ABSENT });
    store.publish({ meta: { ...m.meta, name: 'holes' }, table: m.table });
    const s = await assembleImage(store, 'holesasm', specs('holes:1'));
    const t = (await store.readManifest('holesasm', s.version)).table;
    // Target chunk 1 + k (the partition starts at 1 MiB) covers source bytes of chunks k and k+1.
    expect(chunkAt(t, 1 + 2).kind).toBe(ChunkKind.UNUSED); // source chunks 2, 3: unused
    expect(chunkAt(t, 1 + 3).kind).toBe(ChunkKind.UNUSED); // 3, 4
    expect(chunkAt(t, 1 + 4).kind).toBe(ChunkKind.ABSENT); // 4 unused, 5 absent
    expect(chunkAt(t, 1 + 5).kind).toBe(ChunkKind.DATA); // 5 absent, 6 data: zeros, then data
    expect(chunkAt(t, 1 + 1).kind).toBe(ChunkKind.DATA); // 1 data, 2 unused
    const out = join(dir, 'holes.img');
    await exportImage(store, { name: 'holesasm' }, out);
    const shift = MiB - B1[0]; // where source chunk k+1 begins inside target chunk k
    const c6 = range(out, (1 + 5) * MiB, MiB);
    expect(c6.subarray(0, shift).every((x) => x === 0)).toBe(true);
    expect(c6.subarray(shift).equals(range(b, 6 * MiB, MiB - shift))).toBe(true);
  }, 120_000);

  itNeeds(NEEDS, 'refuses a damaged source chunk of a re-chunked partition and publishes nothing', async () => {
    const other = Store.open(join(dir, 'data2'));
    await importImage(other, b, 'srcb', { workers: 2 });
    const m = await other.readManifest('srcb', 1);
    const victim = other.chunkPath(chunkAt(m.table, 3).sha256);
    const bytes = readFileSync(victim);
    bytes[100] ^= 0xff;
    writeFileSync(victim, bytes);
    const err = await assembleImage(other, 'bad', specs('srcb:1')).then(() => null, (e: unknown) => e);
    expect(isError(err, ERR.CHUNK_CORRUPT), String(err)).toBe(true);
    expect(other.versions('bad')).toEqual([]);
  }, 120_000);

  itNeeds(NEEDS, 'takes partitions from a source with another chunk size: re-chunked, bytes exact', async () => {
    await importImage(store, b, 'smallchunks', { workers: 2, chunkSize: 256 << 10 });
    const s = await assembleImage(store, 'mixed', specs('srca:1', 'smallchunks:2'));
    expect(s.reusedChunks).toBe(16); // the ESP's; the other partition's chunks are 256 KiB in its source
    const out = join(dir, 'mixed.img');
    await exportImage(store, { name: 'mixed' }, out);
    expect((await store.readManifest('mixed', s.version)).meta.chunkSize).toBe(MiB);
    expect(sha(range(out, s.table.partitions[1].start, B2[1]))).toBe(sha(range(b, B2[0], B2[1])));
    expect(spawnSync('sgdisk', ['-v', out], { encoding: 'utf8' }).stdout).toContain('No problems found');
  }, 120_000);

  itNeeds(NEEDS, 'the CLI takes --part more than once, prints the sources, and image info shows them', async () => {
    const data = join(dir, 'data');
    const r = await cli(['image', 'assemble', 'viacli', '--part', 'srca:1', '--part', 'srcb@1:2', '--data', data, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.assembledFrom.map((x: { image: string; partition: number }) => `${x.image}:${x.partition}`)).toEqual(['srca:1', 'srcb:2']);
    const info = await cli(['image', 'info', 'viacli', '--data', data]);
    expect(info.stdout).toMatch(/1 {2}start {4}1\.0 MiB .*EFI System {2}"ESP" {2}from srca@1 partition 1/);
    expect(info.stdout).toMatch(/2 {2}start .*Microsoft basic data {2}from srcb@1 partition 2/);
    const typo = await cli(['image', 'assemble', 'viacli', '--part', 'srca:7', '--data', data]);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/srca@1 has no partition 7: its gpt table lists 1 \(EFI System/);
    const none = await cli(['image', 'assemble', 'viacli', '--data', data]);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--part IMAGE\[@V\]:N/);
    expect((await cli(['image', 'assemble', 'viacli', '--part', 'srca:1', '--size', '12abc', '--data', data])).stderr).toMatch(/--size takes auto or a number/);
  }, 120_000);

  itNeeds(NEEDS, 'the admin API assembles with the token, checks every field of the body first, and refuses without the token', async () => {
    const srv = await startServer({ store: Store.open(join(dir, 'data')), listen: '127.0.0.1:0', version: 'test' });
    try {
      const post = (body: string, token: string | null = srv.token) =>
        serverFetch(srv, '/api/images/assemble', { method: 'POST', body, headers: { 'content-type': 'application/json', ...(token === null ? {} : { authorization: `Bearer ${token}` }) } });
      const hostile: [string, RegExp][] = [
        ['not json', /not JSON/],
        ['[1,2]', /JSON object/],
        ['{"name":"x","parts":["srca:1"],"evil":1}', /unknown field "evil"/],
        ['{"name":"x","parts":[]}', /parts must be a list of 1 to 128/],
        [JSON.stringify({ name: 'x', parts: Array(129).fill('srca:1') }), /parts must be a list/],
        ['{"name":"x","parts":[{"image":"srca"}]}', /each part must be/],
        [JSON.stringify({ name: 'x'.repeat(65), parts: ['srca:1'] }), /name must be an image name/],
        ['{"name":"../../etc","parts":["srca:1"]}', /not a valid image name/],
        ['{"name":"x","parts":["srca:1"],"size":"1e9"}', /size must be a whole number/],
        ['{"name":"x","parts":["srca:1"],"size":1.5}', /size must be a whole number/],
        ['{"name":"x","parts":["srca:1"],"table":"apm"}', /table must be/],
        ['{"name":"x","parts":["srca:1"],"growLast":"yes"}', /growLast must be/],
        ['{"name":"x","parts":["srca:99"]}', /has no partition 99/],
      ];
      for (const [body, text] of hostile) {
        const r = await post(body);
        expect(r.status, body).toBeGreaterThanOrEqual(400);
        expect(r.status, body).toBeLessThan(500);
        expect((await r.json()).error.message, body).toMatch(text);
      }
      expect((await post('{"name":"x","parts":["srca:1"]}', null)).status).toBe(401);
      expect((await post('{"name":"x","parts":["srca:1"]}', 'f'.repeat(48))).status).toBe(401);
      expect(store.versions('x')).toEqual([]);
      const ok = await post(JSON.stringify({ name: 'viaapi', parts: ['srca:1', 'srcb:2'], table: 'mbr' }));
      expect(ok.status).toBe(201);
      const summary = await ok.json();
      expect(summary.table.scheme).toBe('mbr');
      expect(summary.assembledFrom.map((x: { image: string }) => x.image)).toEqual(['srca', 'srcb']);
      const list = await (await serverFetch(srv, '/api/images', { headers: { authorization: `Bearer ${srv.token}` } })).json();
      expect(list.map((e: { name: string }) => e.name)).toContain('viaapi');
    } finally {
      await srv.close();
    }
  }, 120_000);
});
