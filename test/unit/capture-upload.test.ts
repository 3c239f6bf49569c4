/**
 * Poisoned capture uploads, on loopback with a real server: a chunk table
 * whose records disagree with the chunks they name, an unknown record kind,
 * a table bigger than the disk can need, script in a progress field, and
 * uploads into an ended capture are all refused; a good upload publishes
 * with the partition table read from the uploaded bytes, not the agent's
 * word.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CHUNK, encodeChunk } from '../../protocol/chunk.js';
import { CONTROL, encodeAgentMessage } from '../../protocol/control.js';
import { sha256, xxh64 } from '../../protocol/hash.js';
import { ChunkKind, newChunkTable, setChunk } from '../../protocol/manifest.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import '../../native/addon.js';
import { itNeeds, serverFetch, serverSocket, tempDir } from '../helpers.js';

const MAC = '02:00:00:00:0e:01';
const MiB = 1 << 20;

describe('capture uploads are checked', () => {
  const dir = tempDir('upload');
  let srv: RunningServer;
  let ws: WebSocket;
  const call = async (method: string, path: string, body?: Buffer | string) => {
    const res = await serverFetch(srv, path, { method, headers: { authorization: `Bearer ${srv.token}`, 'content-type': typeof body === 'string' ? 'application/json' : 'application/octet-stream' }, body });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  const capture = async (image: string) => {
    const r = await call('POST', '/api/captures', JSON.stringify({ machine: MAC, image }));
    expect(r.status).toBe(201);
    return r.body.id as number;
  };
  /** Uploads one chunk; returns its table record. */
  const upload = async (id: number, raw: Buffer) => {
    const { compression, data } = encodeChunk(raw);
    const sha = sha256(raw);
    expect((await call('PUT', `/api/captures/${id}/chunks/${sha.toString('hex')}`, Buffer.from(data))).status).toBe(200);
    return { kind: ChunkKind.DATA, compression, storedLength: data.length - CHUNK.HEADER_SIZE, xxh64: xxh64(raw), sha256: sha } as const;
  };
  const finish = (id: number, extra: Record<string, unknown> = {}) =>
    call('POST', `/api/captures/${id}/finish`, JSON.stringify({ diskSize: 4 * MiB, sectorSize: 512, chunkSize: MiB, partitionTable: { scheme: 'none', sectorSize: 512, partitions: [], warnings: [] }, badRanges: [], device: '/dev/vda', blockDevice: true, ...extra }));

  beforeAll(async () => {
    srv = await startServer({ store: Store.open(join(dir, 'data')), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
    ws = serverSocket(srv, CONTROL.AGENT_PATH);
    ws.on('error', () => {});
    await new Promise<void>((r) => ws.on('open', () => r()));
    ws.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token: srv.token, machineId: MAC, macs: [MAC], hostname: 'victim', agentVersion: 't', disks: [{ device: '/dev/vda', size: 4 * MiB, logicalSector: 512, physicalSector: 512 }] } }));
    const end = Date.now() + 5000;
    while (srv.registry.get(MAC)?.online !== true && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  });
  afterAll(async () => {
    ws?.close();
    await srv?.close();
  });

  it('refuses a table record whose xxh64 differs from the stored chunk it names', async () => {
    const id = await capture('poison1');
    const rec = await upload(id, randomBytes(MiB));
    const table = newChunkTable(4);
    setChunk(table, 0, { ...rec, xxh64: rec.xxh64 ^ 1n });
    expect((await call('PUT', `/api/captures/${id}/table`, table)).status).toBe(200);
    const r = await finish(id);
    expect(r.status).toBe(400);
    expect(r.body.error.message).toMatch(/record 0: its xxh64 differs from the stored chunk/);
    expect(srv.captures.get(id).state).toBe('running');
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  });

  it('refuses a record that names a chunk of the wrong length for its place, and an unknown record kind', async () => {
    const id = await capture('poison2');
    const rec = await upload(id, randomBytes(4096));
    const table = newChunkTable(4);
    setChunk(table, 1, rec);
    await call('PUT', `/api/captures/${id}/table`, table);
    expect((await finish(id)).body.error.message).toMatch(/record 1: names a chunk of 4096 bytes where the disk has 1048576/);
    const kinds = newChunkTable(4);
    kinds.writeUInt8(7, 2 * 48);
    await call('PUT', `/api/captures/${id}/table`, kinds);
    expect((await finish(id)).body.error.message).toMatch(/record 2: unknown kind 7/);
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  });

  it('refuses capture requests with hostile fields before claiming the machine', async () => {
    for (const [fields, message] of [
      [{ partitions: 'abc' }, /partitions must be a list/],
      [{ disk: 7 }, /disk must be a device path/],
      [{ force: 'yes' }, /force must be true or false/],
      [{ disk: '/dev/sdz' }, /is not one of/],
    ] as [Record<string, unknown>, RegExp][]) {
      const r = await call('POST', '/api/captures', JSON.stringify({ machine: MAC, image: 'hostile', ...fields }));
      expect(r.status, JSON.stringify(fields)).toBe(400);
      expect(r.body.error.message).toMatch(message);
    }
    expect(srv.registry.get(MAC)?.activity).toEqual({ kind: 'idle' });
  });

  it('refuses a table bigger than the disk needs, script in a progress field, and uploads into an ended capture', async () => {
    const id = await capture('poison3');
    const big = await call('PUT', `/api/captures/${id}/table`, Buffer.alloc(48 * 5));
    expect(big.status).toBe(413);
    expect(big.body.error.message).toMatch(/240 bytes is over the 192/);
    // A multi-MiB chunk is refused by its length before a byte of it is read, and the client gets the answer.
    const huge = await call('PUT', `/api/captures/${id}/chunks/${'a'.repeat(64)}`, Buffer.alloc(8 << 20));
    expect(huge.status).toBe(413);
    const xss = await call('POST', `/api/captures/${id}/progress`, JSON.stringify({ chunksDone: 1, chunksTotal: 4, reused: '<img src=x onerror=alert(1)>' }));
    expect(xss.status).toBe(400);
    expect(srv.captures.get(id).progress.reused).toBe(0);
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'ended' }));
    const late = await call('PUT', `/api/captures/${id}/chunks/${'0'.repeat(64)}`, Buffer.alloc(64));
    expect(late.status).toBe(409);
    expect(late.body.error.message).toMatch(/has ended/);
  });

  itNeeds(['sfdisk'], 'publishes the partition table the uploaded bytes hold, not the one the agent claims', async () => {
    const disk = join(dir, 'mbr.img');
    writeFileSync(disk, Buffer.alloc(4 * MiB));
    execFileSync('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=4096, type=83\n' });
    const bytes = readFileSync(disk);
    const id = await capture('honest');
    const table = newChunkTable(4);
    setChunk(table, 0, await upload(id, bytes.subarray(0, MiB)));
    await call('PUT', `/api/captures/${id}/table`, table);
    const lie = { scheme: 'gpt', sectorSize: 512, partitions: [{ number: 1, start: 0, size: 4 * MiB, type: '<script>' }], warnings: [] };
    const r = await finish(id, { partitionTable: lie, progress: { chunksDone: 4, chunksTotal: 4, bytesRead: 4 * MiB, reused: 0, bytesSent: MiB } });
    expect(r.status).toBe(200);
    const stored = await Store.open(join(dir, 'data')).readManifest('honest', 1);
    expect(stored.meta.partitionTable.scheme).toBe('mbr');
    expect(stored.meta.partitionTable.partitions).toEqual([expect.objectContaining({ number: 1, start: 2048 * 512, size: 4096 * 512, type: '0x83' })]);
  });
});
