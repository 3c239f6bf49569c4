/**
 * A poisoned capture upload is refused and publishes nothing (issue 12),
 * on loopback with a real server and agents that speak the control
 * protocol: table records that name a stored chunk with other attributes,
 * a table for more chunks than the disk has, an unknown record kind, hostile
 * progress numbers, a finish that lies about the disk, uploads into an ended
 * capture or one being published, and bodies without Content-Length over
 * their cap. Two concurrent large tables stream to disk; a real upload of
 * the same capture still publishes; gc names a bad manifest it cannot read.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect } from 'node:tls';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CHUNK, encodeChunk } from '../../protocol/chunk.js';
import { CONTROL, encodeAgentMessage } from '../../protocol/control.js';
import { sha256, xxh64 } from '../../protocol/hash.js';
import { chunkAt, ChunkKind, encodeManifest, newChunkTable, setChunk, type ChunkRecord, type ManifestMeta } from '../../protocol/manifest.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { collectGarbage, removeImage } from '../../server/store/maintenance.js';
import { Store } from '../../server/store/store.js';
import '../../native/addon.js';
import { serverFetch, serverSocket, tempDir } from '../helpers.js';

const MiB = 1 << 20;
const TiB = 1024 * 1024 * MiB;
const BIG1 = '02:00:00:00:0f:e1';
const BIG2 = '02:00:00:00:0f:e2';

interface Answer {
  status: number;
  body: Record<string, any>;
}

/**
 * Sends a body in parts with chunked transfer encoding (no Content-Length);
 * an error before the answer (a reset) fails the test. `closed` resolves
 * with the parts sent when the connection ends.
 */
function streamPut(url: URL, cert: Buffer, token: string, parts: number, part: Buffer, closed?: (sent: number) => void): Promise<Answer & { sent: number }> {
  return new Promise((resolve, reject) => {
    let sent = 0;
    const req = request(url, { method: 'PUT', agent: false, ca: cert, checkServerIdentity: () => undefined, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } }, (res) => {
      const bufs: Buffer[] = [];
      res.on('data', (b: Buffer) => bufs.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(bufs).toString('utf8') || '{}'), sent }));
    });
    req.on('error', reject);
    req.on('close', () => closed?.(sent));
    const write = () => {
      while (sent < parts && !req.destroyed) {
        sent++;
        if (!req.write(part)) return void req.once('drain', write);
      }
      req.end();
    };
    write();
  });
}

/** Sends a chunked body over a raw socket until the server closes it (or `max` bytes); the client never closes first. */
function endlessPut(url: URL, cert: Buffer, token: string, max: number): Promise<{ answer: string; sent: number }> {
  return new Promise((resolve) => {
    const socket = connect({ port: Number(url.port), host: url.hostname, ca: cert, checkServerIdentity: () => undefined });
    const part = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(65536, 3), Buffer.from('\r\n')]);
    let sent = 0;
    let answer = '';
    const done = () => resolve({ answer, sent });
    socket.on('data', (b: Buffer) => (answer += b.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', done);
    const write = () => {
      while (sent < max && !socket.destroyed) {
        sent += 65536;
        if (!socket.write(part)) return void socket.once('drain', write);
      }
      if (sent >= max) socket.destroy();
    };
    socket.on('secureConnect', () => {
      socket.write(`PUT ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`);
      write();
    });
  });
}

const until = async (what: () => boolean, ms = 20_000) => {
  const end = Date.now() + ms;
  while (!what()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('a poisoned capture upload is refused and publishes nothing', () => {
  const dir = tempDir('poison');
  let store: Store;
  let srv: RunningServer;
  const cert = () => readFileSync(join(srv.certDir, 'cert.pem'));
  const sockets: WebSocket[] = [];
  const call = async (method: string, path: string, body?: Buffer | string): Promise<Answer> => {
    const res = await serverFetch(srv, path, { method, headers: { authorization: `Bearer ${srv.token}`, 'content-type': typeof body === 'string' ? 'application/json' : 'application/octet-stream' }, body });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  const hello = async (mac: string, size: number) => {
    const ws = serverSocket(srv, CONTROL.AGENT_PATH);
    ws.on('error', () => {});
    sockets.push(ws);
    await new Promise<void>((r) => ws.on('open', () => r()));
    ws.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token: srv.token, machineId: mac, macs: [mac], hostname: 'pc', agentVersion: 't', disks: [{ device: '/dev/vda', size, logicalSector: 512, physicalSector: 512 }] } }));
    await until(() => srv.registry.get(mac)?.online === true);
  };
  let machines = 0;
  /** A capture on a machine of its own (a failed test leaves no other test's machine busy). */
  const capture = async (image: string, machine?: string) => {
    if (machine === undefined) {
      machine = `02:00:00:00:0f:${(++machines).toString(16).padStart(2, '0')}`;
      await hello(machine, 4 * MiB);
    }
    const r = await call('POST', '/api/captures', JSON.stringify({ machine, image }));
    expect(r.status, JSON.stringify(r.body)).toBe(201);
    return r.body.id as number;
  };
  const upload = async (id: number, raw: Buffer): Promise<ChunkRecord> => {
    const { compression, data } = encodeChunk(raw);
    const sha = sha256(raw);
    expect((await call('PUT', `/api/captures/${id}/chunks/${sha.toString('hex')}`, Buffer.from(data))).status).toBe(200);
    return { kind: ChunkKind.DATA, compression, storedLength: data.length - CHUNK.HEADER_SIZE, xxh64: xxh64(raw), sha256: sha };
  };
  const finishBody = (extra: Record<string, unknown> = {}) =>
    JSON.stringify({ diskSize: 4 * MiB, sectorSize: 512, chunkSize: MiB, partitionTable: { scheme: 'none', sectorSize: 512, partitions: [], warnings: [] }, badRanges: [], device: '/dev/vda', blockDevice: true, ...extra });
  const finish = (id: number, extra: Record<string, unknown> = {}) => call('POST', `/api/captures/${id}/finish`, finishBody(extra));
  const table = (id: number, t: Buffer) => call('PUT', `/api/captures/${id}/table`, t);
  const published = (image: string) => store.versions(image);

  beforeAll(async () => {
    store = Store.open(join(dir, 'data'));
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
  });
  afterAll(async () => {
    for (const ws of sockets) ws.close();
    await srv?.close();
  });

  it('records the stored chunk\'s codec and stored length, whatever the agent says (the store may hold it otherwise compressed)', async () => {
    const id = await capture('restored-form');
    const good = await upload(id, Buffer.concat([Buffer.alloc(MiB / 2, 7), randomBytes(MiB / 2)]));
    const t = newChunkTable(4);
    setChunk(t, 0, good);
    setChunk(t, 1, { ...good, compression: good.compression === 0 ? 1 : 0 });
    setChunk(t, 2, { ...good, storedLength: good.storedLength + 1 });
    expect((await table(id, t)).status).toBe(200);
    const done = await finish(id, { progress: { chunksDone: 4, chunksTotal: 4, bytesRead: MiB, reused: 0, bytesSent: good.storedLength + CHUNK.HEADER_SIZE } });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    const m = await store.readManifest('restored-form', 1);
    for (const i of [0, 1, 2]) expect(chunkAt(m.table, i)).toEqual({ ...good, sha256: Buffer.from(good.sha256) });
  });

  it('refuses records that name a stored chunk with another xxh64, kind or reserved bytes, and one never uploaded, naming the record', async () => {
    const id = await capture('golden');
    const good = await upload(id, Buffer.concat([Buffer.alloc(MiB / 2, 7), randomBytes(MiB / 2)]));
    const cases: [string, (t: Buffer) => void, RegExp][] = [
      ['xxh64', (t) => setChunk(t, 3, { ...good, xxh64: good.xxh64 ^ 0x8000n }), /record 3: its xxh64 differs from the stored chunk/],
      ['zero kind with a hash', (t) => setChunk(t, 1, { ...good, kind: ChunkKind.ZERO }), /record 1: a zero chunk carries no hash/],
      ['absent kind with a hash', (t) => setChunk(t, 2, { ...good, kind: ChunkKind.ABSENT }), /record 2: an absent chunk carries no hash/],
      ['unknown kind', (t) => setChunk(t, 3, { ...good, kind: 9 as never }), /record 3: unknown kind 9/],
      ['reserved bytes', (t) => (setChunk(t, 0, good), t.writeUInt16BE(1, 2)), /record 0: reserved bytes are not zero/],
      ['never uploaded', (t) => setChunk(t, 2, { ...good, sha256: sha256(Buffer.from('not stored')) }), /record 2: chunk [0-9a-f]{64} was never uploaded/],
    ];
    for (const [what, poison, message] of cases) {
      const t = newChunkTable(4);
      setChunk(t, 0, good);
      poison(t);
      expect((await table(id, t)).status, what).toBe(200);
      const r = await finish(id);
      expect(r.status, what).toBeGreaterThanOrEqual(400);
      expect(r.body.error.message, what).toMatch(message);
      expect(published('golden'), what).toEqual([]);
    }
    // A stored chunk file cut short (a damaged store) is named, not published.
    const short = await upload(id, randomBytes(MiB));
    const path = store.chunkPath(short.sha256);
    const whole = readFileSync(path);
    writeFileSync(path, whole.subarray(0, CHUNK.HEADER_SIZE + 10));
    const cut = newChunkTable(4);
    setChunk(cut, 0, good);
    setChunk(cut, 3, short);
    expect((await table(id, cut)).status).toBe(200);
    const damaged = await finish(id);
    expect(damaged.body.error.message).toMatch(/record 3: the stored chunk [0-9a-f]{64} is shorter than its header says/);
    writeFileSync(path, whole);
    expect(published('golden')).toEqual([]);
    // The same capture with an honest table still publishes.
    const honest = newChunkTable(4);
    setChunk(honest, 0, good);
    expect((await table(id, honest)).status).toBe(200);
    const done = await finish(id, { progress: { chunksDone: 4, chunksTotal: 4, bytesRead: MiB, reused: 0, bytesSent: good.storedLength + CHUNK.HEADER_SIZE } });
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    expect(published('golden')).toEqual([1]);
    const m = await store.readManifest('golden', 1);
    expect(m.table.equals(honest)).toBe(true);
  });

  it('refuses a table for more or fewer chunks than the disk has, and a finish that lies about the disk', async () => {
    const id = await capture('lies');
    // One record too many, sent without a Content-Length: refused while it streams, and the client reads the 413.
    const over = await streamPut(new URL(`/api/captures/${id}/table`, srv.url), cert(), srv.token, 5, Buffer.alloc(48));
    expect(over.status).toBe(413);
    expect(over.body.error.message).toMatch(/chunk table over 192 bytes/);
    expect((await table(id, newChunkTable(3))).status).toBe(200);
    expect((await finish(id)).body.error.message).toMatch(/3 records where a disk of 4194304 bytes has 4 chunks/);
    expect((await table(id, newChunkTable(4))).status).toBe(200);
    for (const [extra, message] of [
      [{ diskSize: 8 * MiB }, /disk size 8388608 differs from the 4194304 bytes/],
      [{ diskSize: -1 }, /disk size -1 is not a byte count/],
      [{ chunkSize: 2 * MiB }, /chunk size 2097152 is not the capture's 1048576/],
      [{ sectorSize: 4096, partitionTable: { scheme: 'none', sectorSize: 4096, partitions: [], warnings: [] } }, /sector size 4096 differs from the 512 the machine reported/],
      [{ device: '/dev/sdz' }, /device \/dev\/sdz is neither the capture's \/dev\/vda nor a disk the machine reported/],
      [{ device: '/dev/vda\u001b[2J' }, /device must be a path of 1-256 printable characters/],
      [{ badRanges: [{ offset: 2 * MiB, length: 512 }, { offset: 0, length: 512 }] }, /bad range 1 must be/],
      [{ badRanges: [{ offset: 4 * MiB - 512, length: 1024 }] }, /bad range 0 must be/],
      [{ blockDevice: 'yes' }, /blockDevice must be true or false/],
      [{ partitionTable: { scheme: 'mbr', sectorSize: 512, partitions: [{ number: 1, start: 0, size: 8 * MiB, type: '83' }], warnings: [] } }, /partition 0 ends beyond the disk/],
      [{ partitionTable: { scheme: 'mbr', sectorSize: 512, partitions: [{ number: 1, start: 512, size: 512, type: '83' }, { number: 1, start: 1024, size: 512, type: '83' }], warnings: [] } }, /partition 1 number must be 1-256 and not repeated/],
      [{ partitionTable: { scheme: 'mbr', sectorSize: 512, partitions: [], warnings: ['\u001b]0;owned\u0007'] } }, /warning must be printable text/],
    ] as [Record<string, unknown>, RegExp][]) {
      const r = await finish(id, extra);
      expect(r.status, JSON.stringify(extra)).toBe(400);
      expect(r.body.error.message, JSON.stringify(extra)).toMatch(message);
    }
    expect(published('lies')).toEqual([]);
    expect(srv.captures.get(id).state).toBe('running');
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  });

  it('refuses progress with huge, negative, fractional, infinite and non-number values, and keeps the last good one', async () => {
    const id = await capture('numbers');
    const ok = await call('POST', `/api/captures/${id}/progress`, JSON.stringify({ chunksDone: 1, chunksTotal: 4, bytesRead: MiB, reused: 0, bytesSent: 100 }));
    expect(ok.status).toBe(200);
    const before = { ...srv.captures.get(id).progress };
    for (const body of [
      '{"chunksDone": 1e300}',
      '{"chunksDone": -1}',
      '{"chunksDone": 1.5}',
      '{"bytesRead": 1e400}',
      '{"bytesRead": "NaN"}',
      '{"bytesRead": 9007199254740993}',
      '{"bytesRead": 4194305}',
      '{"chunksTotal": 5}',
      '{"chunksDone": 3, "chunksTotal": 2}',
      '{"reused": "<img src=x onerror=alert(1)>"}',
      '{"bytesSent": 1e15}',
      '[1, 2]',
    ]) {
      const r = await call('POST', `/api/captures/${id}/progress`, body);
      expect(r.status, body).toBe(400);
      expect(srv.captures.get(id).progress, body).toEqual(before);
    }
    // A finish whose progress is hostile publishes nothing either.
    expect((await table(id, newChunkTable(4))).status).toBe(200);
    expect((await finish(id, { progress: { chunksDone: -5 } })).status).toBe(400);
    expect(published('numbers')).toEqual([]);
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  });

  it('refuses every upload into a capture being published (409), then publishes', async () => {
    const id = await capture('slow');
    expect((await table(id, newChunkTable(4))).status).toBe(200);
    // Hold the publication at its barrier: the capture is finishing meanwhile.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const barrier = store.barrier.bind(store);
    let held = false;
    store.barrier = async () => {
      held = true;
      await gate;
      return barrier();
    };
    try {
      const finishing = finish(id);
      await until(() => held);
      for (const [method, path, body] of [
        ['PUT', `/api/captures/${id}/table`, newChunkTable(4)],
        ['PUT', `/api/captures/${id}/chunks/${'a'.repeat(64)}`, Buffer.alloc(64)],
        ['POST', `/api/captures/${id}/progress`, '{"chunksDone": 1}'],
        ['POST', `/api/captures/${id}/have`, '{"chunks": []}'],
        ['POST', `/api/captures/${id}/finish`, finishBody()],
      ] as [string, string, Buffer | string][]) {
        const r = await call(method, path, body);
        expect(r.status, path).toBe(409);
        expect(r.body.error.message, path).toMatch(/is (being|already being) published/);
      }
      open();
      expect((await finishing).status).toBe(200);
    } finally {
      store.barrier = barrier;
      open();
    }
    expect(published('slow')).toEqual([1]);
  });

  it('refuses every upload into an ended capture with 409 before reading its body, and publishes nothing', async () => {
    const id = await capture('ended');
    expect((await table(id, newChunkTable(4))).status).toBe(200);
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'stopped' }));
    const good = encodeChunk(randomBytes(4096));
    for (const [method, path, body] of [
      ['PUT', `/api/captures/${id}/chunks/${sha256(randomBytes(8)).toString('hex')}`, Buffer.from(good.data)],
      ['PUT', `/api/captures/${id}/table`, newChunkTable(4)],
      ['POST', `/api/captures/${id}/progress`, '{"chunksDone": 1}'],
      ['POST', `/api/captures/${id}/have`, '{"chunks": []}'],
      ['POST', `/api/captures/${id}/finish`, finishBody()],
    ] as [string, string, Buffer | string][]) {
      const r = await call(method, path, body);
      expect(r.status, path).toBe(409);
      expect(r.body.error.code, path).toBe('CLONECAST_ERR_ENDED');
      expect(r.body.error.message, path).toMatch(/has ended \(failed: .*stopped\)/);
    }
    // A large body without Content-Length into the ended capture: answered, not reset, and not stored.
    const late = await streamPut(new URL(`/api/captures/${id}/table`, srv.url), cert(), srv.token, 64, Buffer.alloc(64 * 1024));
    expect(late.status).toBe(409);
    expect(published('ended')).toEqual([]);
  });

  it('answers 413 to a chunk or a table twice its cap sent without Content-Length, and stores nothing of it', async () => {
    const id = await capture('chunked');
    const tmp = join(dir, 'data', 'tmp');
    const mine = () => readdirSync(tmp).filter((f) => f.startsWith(`capture-${id}-`));
    const cap = CHUNK.HEADER_SIZE + MiB;
    const chunk = await streamPut(new URL(`/api/captures/${id}/chunks/${'b'.repeat(64)}`, srv.url), cert(), srv.token, Math.ceil((2 * cap) / 65536), Buffer.alloc(65536, 1));
    expect(chunk.status).toBe(413);
    expect(chunk.body.error.message).toMatch(new RegExp(`request body over ${cap} bytes`));
    const t = await streamPut(new URL(`/api/captures/${id}/table`, srv.url), cert(), srv.token, 8, Buffer.alloc(48));
    expect(t.status).toBe(413);
    expect(mine()).toEqual([]);
    // A client that keeps sending after the answer is read from only so far (64 MiB), then cut off by the server.
    const endless = await endlessPut(new URL(`/api/captures/${id}/chunks/${'c'.repeat(64)}`, srv.url), cert(), srv.token, 256 * MiB);
    console.log(`an endless chunk body: answered ${endless.answer.split('\r\n')[0]}; the server closed the connection after ${(endless.sent / MiB).toFixed(0)} MiB sent`);
    expect(endless.answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(endless.sent).toBeLessThan(256 * MiB);
    expect(srv.captures.get(id).received.chunks).toBe(0);
    // The server still answers, and the capture is untouched.
    expect((await call('GET', `/api/captures/${id}`)).body.state).toBe('running');
    await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  });

  it('streams two concurrent large tables to disk instead of holding them', async () => {
    await hello(BIG1, 4 * TiB);
    await hello(BIG2, 4 * TiB);
    const a = await capture('big1', BIG1);
    const b = await capture('big2', BIG2);
    const part = Buffer.alloc(48 * 1365); // 65,520 bytes: whole records
    const parts = 1536; // 96 MiB each
    let peak = 0;
    const base = process.memoryUsage();
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peak = Math.max(peak, m.heapUsed + m.arrayBuffers - base.heapUsed - base.arrayBuffers);
    }, 5);
    let results;
    try {
      results = await Promise.all([a, b].map((id) => streamPut(new URL(`/api/captures/${id}/table`, srv.url), cert(), srv.token, parts, part)));
    } finally {
      clearInterval(sampler);
    }
    const total = 2 * parts * part.length;
    console.log(`two concurrent table uploads of ${(total / 2 / MiB).toFixed(0)} MiB each: heap and buffers grew at most ${(peak / MiB).toFixed(1)} MiB (${((100 * peak) / total).toFixed(1)}% of what was sent)`);
    for (const r of results) expect(r.status, JSON.stringify(r.body)).toBe(200);
    // Held whole, the two bodies would be all of `total` at once; streamed, a few parts each.
    expect(peak).toBeLessThan(total / 2);
    for (const id of [a, b]) await call('POST', `/api/captures/${id}/fail`, JSON.stringify({ reason: 'done testing' }));
  }, 180_000);

  it('a manifest with an unknown record kind is never published, and gc names one it cannot read and says what to do', async () => {
    const other = Store.open(join(dir, 'gc'));
    const meta: ManifestMeta = {
      name: 'bad', version: 0, diskSize: 4 * MiB, sectorSize: 512, chunkSize: MiB, createdAt: new Date().toISOString(), parent: null,
      source: { path: '/dev/vda', kind: 'block-device', description: 'test' }, partitionTable: { scheme: 'none', sectorSize: 512, partitions: [], warnings: [] }, badRanges: [], newBytes: 0,
    };
    const t = newChunkTable(4);
    t.writeUInt8(7, 2 * 48);
    expect(() => other.publish({ meta: { ...meta }, table: t })).toThrow(/chunk 2 has unknown kind 7/);
    expect(other.versions('bad')).toEqual([]);
    // One written by an older version, straight to its file: gc refuses, naming it and the way out.
    mkdirSync(join(other.root, 'images', 'bad'), { recursive: true });
    other.writeAtomic(other.manifestPath('bad', 1), encodeManifest({ meta: { ...meta, version: 1 }, table: t }));
    await expect(collectGarbage(other)).rejects.toThrow(/gc refused: bad@1 cannot be read .*unknown kind 7.*clonecast image rm bad@1/);
    removeImage(other, { name: 'bad', version: 1 });
    await expect(collectGarbage(other)).resolves.toMatchObject({ removedChunks: 0 });
  });
});
