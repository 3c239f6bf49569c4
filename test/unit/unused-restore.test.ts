/**
 * Unused chunks on restore (docs/image-format.md, "Unused chunks on
 * restore"): never sent, never written, not read back, verified or digested;
 * trimmed with discard; left as holes or untouched by an export. The targets
 * start full of random bytes, so a chunk written by mistake shows.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { expectedDigest } from '../../server/result-digest.js';
import { Sender } from '../../transfer/sender.js';
import { Receiver } from '../../transfer/receiver.js';
import { chunkRuns } from '../../transfer/zero.js';
import { chunkAt, ChunkKind, diskDigest, setChunk, tableLength, type Manifest } from '../../protocol/manifest.js';
import { encodeServerMessage, decodeServerMessage } from '../../protocol/control.js';
import { FakeNetwork } from './fake-network.js';
import { detachLoops, itNeeds, loopAttach, seeded, tempDir, texty } from '../helpers.js';

const C = 64 << 10;
/** Chunks made unused: data ones (5, 6, 12, 13, 14), a zero one (8) and the last (partial, 4 KiB) one. */
const UNUSED = [5, 6, 8, 12, 13, 14, 22];

/** An image of 23 chunks (the last partial) with some chunks turned unused after import, as used-block imaging makes them. */
async function setup(dir: string): Promise<{ store: Store; manifest: Manifest; image: Buffer }> {
  const store = Store.open(join(dir, 'data'));
  const image = Buffer.concat([seeded(7 * C, 1), Buffer.alloc(3 * C), texty(9 * C, 2), seeded(3 * C + 4096, 3)]);
  writeFileSync(join(dir, 'src.img'), image);
  await importImage(store, join(dir, 'src.img'), 'used', { chunkSize: C, workers: 1 });
  const m = await store.readManifest('used', 1);
  expect(chunkAt(m.table, 8).kind).toBe(ChunkKind.ZERO);
  for (const i of UNUSED) setChunk(m.table, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
  store.replaceManifest(m);
  return { store, manifest: await store.readManifest('used', 1), image };
}

/** Byte range of chunk i. */
function range(m: Manifest, i: number): [number, number] {
  return [i * C, Math.min((i + 1) * C, m.meta.diskSize)];
}

/** Checks a restored target: defined chunks equal the image, unused ones equal `unused(i)`. */
function expectRestored(got: Buffer, m: Manifest, image: Buffer, unused: (i: number) => Buffer): void {
  for (let i = 0; i < tableLength(m.table); i++) {
    const [a, b] = range(m, i);
    const want = chunkAt(m.table, i).kind === ChunkKind.UNUSED ? unused(i) : image.subarray(a, b);
    expect(got.subarray(a, b).equals(want), `chunk ${i} (${chunkAt(m.table, i).kind === ChunkKind.UNUSED ? 'unused' : 'defined'})`).toBe(true);
  }
}

/** One sender and one receiver over an in-memory network; records which chunks the sender loaded. */
async function restore(store: Store, manifest: Manifest, target: string, opts: { discard?: boolean; nonce?: Uint8Array }) {
  const net = new FakeNetwork(5);
  const loaded = new Set<number>();
  const sender = new Sender({
    manifest,
    loadChunk: (i) => {
      loaded.add(i);
      return store.readChunk(chunkAt(manifest.table, i).sha256);
    },
    group: '239.77.0.1',
    port: 9000,
    address: '10.0.0.1',
    rateMbit: 200,
    fragmentSize: 1000,
    createSocket: net.factory('10.0.0.1'),
    openAdmission: true,
  });
  const port = await sender.start();
  try {
    const result = await new Receiver({
      session: { session: sender.session, group: '239.77.0.1', port: 9000, sender: { address: '10.0.0.1', port }, fragmentSize: 1000 },
      manifest,
      target,
      createSocket: net.factory('10.0.0.11'),
      receiverId: 11,
      keys: { data: sender.dataKey, receiver: sender.receiverKeyFor(11) },
      finalVerify: true,
      force: true,
      ...opts,
    }).run();
    return { result, loaded };
  } finally {
    sender.stop();
  }
}

describe('unused chunks on restore', () => {
  const dir = tempDir('unused');
  afterAll(() => detachLoops());

  it('are never sent or written; the disk verifies and its digests agree with the server\'s', async () => {
    const { store, manifest, image } = await setup(dir);
    const random = randomBytes(manifest.meta.diskSize);
    const target = join(dir, 'random.img');
    writeFileSync(target, random);
    const nonce = randomBytes(16);
    const { result, loaded } = await restore(store, manifest, target, { nonce });
    expect(result.verified).toBe(true);
    expect(result.verification!.chunksBad).toBe(0);
    // Only data chunks went out: none of the unused ones.
    expect(UNUSED.filter((i) => loaded.has(i))).toEqual([]);
    expect(loaded.size).toBeGreaterThan(0);
    expectRestored(readFileSync(target), manifest, image, (i) => random.subarray(...range(manifest, i)));
    // Progress counted only what is written: every data chunk, no unused one.
    const data = Array.from({ length: tableLength(manifest.table) }, (_, i) => chunkAt(manifest.table, i).kind).filter((k) => k === ChunkKind.DATA).length;
    expect(result.bytesWritten).toBeLessThan(manifest.meta.diskSize - UNUSED.length * C + C);
    expect(data).toBe(loaded.size);
    // The agent's digests (read back over random bytes in the unused chunks) equal the server's, computed from the store.
    expect(result.verification!.digest.equals(diskDigest(manifest))).toBe(true);
    expect(result.verification!.keyed!.equals((await expectedDigest(store, manifest, nonce)).digest)).toBe(true);
  }, 60_000);

  it('the manifest digest leaves unused chunks out, as absent ones', async () => {
    const { manifest } = await setup(join(dir, 'digest'));
    const asZero: Manifest = { meta: manifest.meta, table: Buffer.from(manifest.table) };
    for (const i of UNUSED) setChunk(asZero.table, i, { kind: ChunkKind.ZERO, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
    const asAbsent: Manifest = { meta: manifest.meta, table: Buffer.from(manifest.table) };
    for (const i of UNUSED) setChunk(asAbsent.table, i, { kind: ChunkKind.ABSENT, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
    expect(diskDigest(manifest).equals(diskDigest(asAbsent))).toBe(true);
    expect(diskDigest(manifest).equals(diskDigest(asZero))).toBe(false);
  });

  it('with discard they are trimmed: holes in a file target', async () => {
    const { store, manifest, image } = await setup(join(dir, 'discard'));
    const target = join(dir, 'discard', 'random.img');
    writeFileSync(target, randomBytes(manifest.meta.diskSize));
    const { result } = await restore(store, manifest, target, { discard: true });
    expect(result.verified).toBe(true);
    expectRestored(readFileSync(target), manifest, image, (i) => Buffer.alloc(range(manifest, i)[1] - range(manifest, i)[0]));
  }, 60_000);

  itNeeds(['loop'], 'on a loop device: left as they were, or read as zeros with discard (the loop device punches the file)', async () => {
    const { store, manifest, image } = await setup(join(dir, 'loop'));
    for (const discard of [false, true]) {
      const file = join(dir, 'loop', `disk-${discard}.img`);
      const random = randomBytes(manifest.meta.diskSize + C); // a little larger, as disks are
      writeFileSync(file, random);
      const dev = loopAttach(file);
      const { result } = await restore(store, manifest, dev, { discard });
      expect(result.verified).toBe(true);
      expectRestored(readFileSync(file), manifest, image, (i) => (discard ? Buffer.alloc(range(manifest, i)[1] - range(manifest, i)[0]) : random.subarray(...range(manifest, i))));
    }
  }, 60_000);

  itNeeds(['loop'], 'image export leaves them untouched on a device, trims them with discard, and makes holes in a file', async () => {
    const { store, manifest, image } = await setup(join(dir, 'export'));
    const ref = parseRef('used@1');
    const file = join(dir, 'export', 'out.img');
    const s = await exportImage(store, ref, file, {});
    expect(s.unusedChunks).toBe(UNUSED.length);
    expectRestored(readFileSync(file), manifest, image, (i) => Buffer.alloc(range(manifest, i)[1] - range(manifest, i)[0]));
    for (const discard of [false, true]) {
      const backing = join(dir, 'export', `dev-${discard}.img`);
      const random = randomBytes(manifest.meta.diskSize + C); // a loop device's size is whole sectors
      writeFileSync(backing, random);
      await exportImage(store, ref, loopAttach(backing), { force: true, discard });
      expectRestored(readFileSync(backing), manifest, image, (i) => (discard ? Buffer.alloc(range(manifest, i)[1] - range(manifest, i)[0]) : random.subarray(...range(manifest, i))));
    }
  }, 60_000);

  it('a receiver refuses a target smaller than the image, naming the size needed and the size used', async () => {
    const { manifest } = await setup(join(dir, 'small'));
    const m: Manifest = { meta: { ...manifest.meta, usedBytes: 9 * C }, table: manifest.table };
    const target = join(dir, 'small', 'small.img');
    writeFileSync(target, Buffer.alloc(8 * C));
    const net = new FakeNetwork(1);
    const r = new Receiver({
      session: { session: 1, group: '239.77.0.1', port: 9000, sender: { address: '10.0.0.1', port: 9001 }, fragmentSize: 1000 },
      manifest: m, target, createSocket: net.factory('10.0.0.11'), receiverId: 11, keys: { data: Buffer.alloc(32, 1), receiver: Buffer.alloc(32, 2) },
    });
    await expect(r.run()).rejects.toThrow(`holds ${8 * C} bytes but the image needs ${manifest.meta.diskSize}; its filesystems use ${9 * C} bytes`);
  });

  it('runs of unused chunks are found in disk order, joined where they touch', async () => {
    const { manifest } = await setup(join(dir, 'runs'));
    expect(chunkRuns(manifest, ChunkKind.UNUSED).map((r) => [r.first, r.last])).toEqual([[5, 6], [8, 8], [12, 14], [22, 22]]);
    const last = chunkRuns(manifest, ChunkKind.UNUSED).at(-1)!;
    expect(last.start + last.length).toBe(manifest.meta.diskSize);
  });

  it('the Assign carries discard and grow-last to the agent', () => {
    const assign = {
      sessionId: 1, image: 'x', version: 1, imageSize: 1 << 20, device: '/dev/sda', group: '239.77.0.1', port: 9000, senderAddress: '10.77.0.1', senderPort: 9001, sessionKey: 1,
      fragmentSize: 1400, receiverId: 3, dataKey: Buffer.alloc(32, 1), receiverKey: Buffer.alloc(32, 2), manifestPath: '/m', discard: true, growLast: true,
    };
    const got = decodeServerMessage(encodeServerMessage({ type: 'assign', assign }));
    expect(got).toMatchObject({ assign: { discard: true, growLast: true } });
    expect(decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, discard: false, growLast: false } }))).toMatchObject({ assign: { discard: false, growLast: false } });
  });
});
