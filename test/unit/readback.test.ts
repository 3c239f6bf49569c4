/**
 * The overlapped read-back (transfer/readback.ts): each chunk is read back
 * soon after it is written. A chunk corrupted on the disk right after its
 * write is caught and fetched again (or, corrupted every time, fails the
 * machine with the chunk named); a resume counts the good chunks it found
 * as verified; and the digests it reports are exactly those the end-of-run
 * verifyDisk() computes over the same disk.
 */
import { describe, expect, it } from 'vitest';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Sender } from '../../transfer/sender.js';
import { Receiver, type ReceiverResult } from '../../transfer/receiver.js';
import { damagedError, ReadBack } from '../../transfer/readback.js';
import { verifyDisk } from '../../transfer/verifier.js';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../../protocol/manifest.js';
import { ERR, isError } from '../../protocol/errors.js';
import { initHashes } from '../../protocol/hash.js';
import { Disk } from '../../native/disk.js';
import { FakeNetwork } from './fake-network.js';
import { seeded, tempDir, texty } from '../helpers.js';

const C = 64 << 10;

async function setup(dir: string) {
  const store = Store.open(join(dir, 'data'));
  const src = join(dir, 'disk.img');
  const disk = Buffer.concat([seeded(5 * C + 100, 1), Buffer.alloc(6 * C), texty(9 * C, 2), seeded(3 * C + 7, 3)]);
  writeFileSync(src, disk);
  await importImage(store, src, 'rb', { chunkSize: C, workers: 1 });
  const { name, version } = store.resolve(parseRef('rb'));
  return { store, manifest: await store.readManifest(name, version), disk };
}

function present(m: Manifest): number {
  let n = 0;
  for (let i = 0; i < tableLength(m.table); i++) if (chunkAt(m.table, i).kind !== ChunkKind.ABSENT) n++;
  return n;
}

/** Runs one receiver against an in-memory sender; onWritten(chunk) is called as each chunk reaches the disk. */
async function receive(dir: string, tag: string, opts: { resume?: boolean; nonce?: Uint8Array; prefill?: Buffer; onWritten?: (chunk: number, target: string) => void; finalVerify?: boolean }) {
  const { store, manifest, disk } = await setup(join(dir, tag));
  const net = new FakeNetwork(5);
  const sender = new Sender({ manifest, loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256), group: '239.77.0.1', port: 9000, address: '10.0.0.1', rateMbit: 100, fragmentSize: 1000, createSocket: net.factory('10.0.0.1'), openAdmission: true });
  const port = await sender.start();
  const target = join(dir, tag, 'out.img');
  writeFileSync(target, opts.prefill ?? Buffer.alloc(0));
  const receiver = new Receiver({
    session: { session: sender.session, group: '239.77.0.1', port: 9000, sender: { address: '10.0.0.1', port }, fragmentSize: 1000 },
    manifest,
    target,
    createSocket: net.factory('10.0.0.11'),
    receiverId: 11,
    keys: { data: sender.dataKey, receiver: sender.receiverKeyFor(11) },
    resume: opts.resume,
    nonce: opts.nonce,
    finalVerify: opts.finalVerify,
  });
  receiver.on('progress', (p: { chunk: number }) => opts.onWritten?.(p.chunk, target));
  try {
    const result: ReceiverResult | Error = await receiver.run().catch((e: Error) => e);
    return { result, manifest, disk, target };
  } finally {
    sender.stop();
  }
}

/** Overwrites chunk c of the file with garbage, behind the receiver's back. */
function corrupt(target: string, c: number): void {
  const fd = openSync(target, 'r+');
  try {
    writeSync(fd, randomBytes(512), 0, 512, c * C + 100);
  } finally {
    closeSync(fd);
  }
}

async function digestsOf(target: string, manifest: Manifest, nonce: Uint8Array) {
  await initHashes();
  const disk = Disk.open(target, { write: false });
  try {
    return await verifyDisk(disk, manifest, () => false, nonce);
  } finally {
    disk.close();
  }
}

describe('reading each chunk back after it is written', () => {
  const dir = tempDir('readback');
  const nonce = randomBytes(32);

  it('reports the same keyed digest and disk digest as the end-of-run verifyDisk on the same disk', async () => {
    const { result, manifest, disk, target } = await receive(dir, 'digest', { nonce });
    if (result instanceof Error) throw result;
    expect(readFileSync(target).equals(disk)).toBe(true);
    const full = await digestsOf(target, manifest, nonce);
    expect(full.chunksBad).toBe(0);
    expect(result.verification!.keyed!.equals(full.keyed!)).toBe(true);
    expect(result.verification!.digest.equals(full.digest)).toBe(true);
    expect(result.verification!.chunksVerified).toBe(full.chunksVerified);
    expect(result.verification!.chunksBad).toBe(0);
    // A different nonce gives a different value: the comparison above is not trivially true.
    expect((await digestsOf(target, manifest, randomBytes(32))).keyed!.equals(full.keyed!)).toBe(false);
  }, 60_000);

  it('a chunk corrupted right after its write is caught, fetched and written again; the run succeeds', async () => {
    let victim = -1;
    const { result, manifest, disk, target } = await receive(dir, 'once', {
      nonce,
      onWritten: (c, file) => {
        if (victim >= 0) return;
        victim = c;
        corrupt(file, c);
      },
    });
    if (result instanceof Error) throw result;
    expect(victim).toBeGreaterThanOrEqual(0);
    expect(result.counters.rewritten).toBe(1);
    expect(readFileSync(target).equals(disk)).toBe(true);
    expect(result.verification!.chunksBad).toBe(0);
    expect(result.verification!.keyed!.equals((await digestsOf(target, manifest, nonce)).keyed!)).toBe(true);
  }, 60_000);

  it('without a nonce (no keyed digest to check it), a chunk corrupted after its write is caught by SHA-256 and written again', async () => {
    let victim = -1;
    const { result, disk, target } = await receive(dir, 'once-plain', {
      onWritten: (c, file) => {
        if (victim >= 0) return;
        victim = c;
        corrupt(file, c);
      },
    });
    if (result instanceof Error) throw result;
    expect(victim).toBeGreaterThanOrEqual(0);
    expect(result.counters.rewritten).toBe(1);
    expect(readFileSync(target).equals(disk)).toBe(true);
  }, 60_000);

  it('a chunk that reads back wrong again after being written again fails the machine, naming the chunk', async () => {
    let victim = -1;
    const { result } = await receive(dir, 'always', {
      nonce,
      onWritten: (c, file) => {
        if (victim < 0) victim = c;
        if (c === victim) corrupt(file, c);
      },
    });
    expect(result).toBeInstanceOf(Error);
    expect(isError(result, ERR.DAMAGED)).toBe(true);
    expect((result as Error).message).toContain(`the first at chunk ${victim} (offset ${victim * C})`);
  }, 60_000);

  it('on resume, the chunks found good on the disk count as verified without being fetched', async () => {
    const { disk: image } = await setup(join(dir, 'peek'));
    // The first 8 chunks already on the disk (5 data, 3 zero), the rest not.
    const prefill = Buffer.concat([image.subarray(0, 8 * C), Buffer.alloc(image.length - 8 * C)]);
    const { result, manifest, disk, target } = await receive(dir, 'resume', { nonce, resume: true, prefill });
    if (result instanceof Error) throw result;
    expect(result.skipped).toBeGreaterThanOrEqual(5);
    expect(result.counters.chunksWritten).toBe(result.chunks - result.skipped); // the good ones were not fetched again
    expect(readFileSync(target).equals(disk)).toBe(true);
    expect(result.verification!.chunksVerified).toBe(present(manifest));
    expect(result.verification!.keyed!.equals((await digestsOf(target, manifest, nonce)).keyed!)).toBe(true);
  }, 60_000);

  it('with finalVerify, the whole disk is read once more at the end and that pass is reported', async () => {
    const { result, manifest, target } = await receive(dir, 'final', { nonce, finalVerify: true });
    if (result instanceof Error) throw result;
    expect(result.verification!.keyed!.equals((await digestsOf(target, manifest, nonce)).keyed!)).toBe(true);
    expect(result.verification!.chunksVerified).toBe(present(manifest));
  }, 60_000);

  it('does not read while the writer is behind, and reads everything queued once asked to finish', async () => {
    const { manifest, disk } = await setup(join(dir, 'busy'));
    const file = join(dir, 'busy', 'copy.img');
    writeFileSync(file, disk);
    await initHashes();
    const d = Disk.open(file, { write: false });
    try {
      let busy = true;
      const rb = new ReadBack(d, manifest, { busy: () => busy, stopped: () => false, rewrite: () => undefined, damaged: () => undefined }, { nonce });
      for (let i = 0; i < tableLength(manifest.table); i++) if (chunkAt(manifest.table, i).kind !== ChunkKind.ABSENT) rb.push(i);
      await new Promise((r) => setTimeout(r, 50));
      expect(rb.counters.verified).toBe(0); // busy: nothing read
      expect(rb.pending).toBe(present(manifest));
      busy = false;
      rb.kick();
      await new Promise((r) => setTimeout(r, 20));
      busy = true; // the writer fell behind again: reading pauses after the read in flight
      const v = await rb.finish(); // the end: read the rest, busy or not
      expect(rb.pending).toBe(0);
      expect(v.chunksVerified).toBe(present(manifest));
      expect(rb.incomplete()).toBe(false);
      expect(v.keyed!.equals((await verifyDisk(d, manifest, () => false, nonce)).keyed!)).toBe(true);
    } finally {
      d.close();
    }
  });

  it('a read that fails (an I/O error) names the disk as failing at once, with the chunk and the error, instead of waiting for ever', async () => {
    const { manifest, disk } = await setup(join(dir, 'eio'));
    const file = join(dir, 'eio', 'copy.img');
    writeFileSync(file, disk);
    await initHashes();
    const d = Disk.open(file, { write: false });
    try {
      // The disk as a failing one answers: every read-back of chunk 3 fails with EIO (a real
      // failing device is what test/lab/read-errors.test.ts makes with FUSE; here the read itself is replaced).
      const real = d.read.bind(d);
      d.read = (async (buf: Buffer, position: number, length: number) => {
        if (position === 3 * C) throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
        return real(buf, position, length);
      }) as typeof d.read;
      let damaged: { chunk: number; cause?: Error } | undefined;
      const rb = new ReadBack(d, manifest, { busy: () => false, stopped: () => false, rewrite: () => undefined, damaged: (chunk, _v, cause) => (damaged = { chunk, cause }) }, { nonce });
      for (let i = 0; i < tableLength(manifest.table); i++) if (chunkAt(manifest.table, i).kind !== ChunkKind.ABSENT) rb.push(i);
      const end = Date.now() + 30_000;
      while (damaged === undefined && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      expect(damaged?.chunk).toBe(3);
      expect(damaged?.cause?.message).toMatch(/EIO/);
      const err = damagedError('/dev/sdz', C, rb.result(), { chunk: 3, cause: damaged!.cause! });
      expect(err.message).toContain(`reading /dev/sdz back failed at chunk 3 (offset ${3 * C}): EIO`);
    } finally {
      d.close();
    }
  });
});
