import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as nbdServer from '../../protocol/nbd.js';
import * as nbdClient from '../../protocol/nbd-client.js';
import { NBD } from '../../protocol/nbd.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { NbdExports, MAX_EXPORTS } from '../../server/nbd/exports.js';
import { serveConnection, HANDSHAKE_BUFFER, TRANSMISSION_BUFFER } from '../../server/nbd/connection.js';
import { PSK_CIPHERS } from '../../server/nbd/tls.js';
import { ImageSource } from '../../server/nbd/image-source.js';
import { seeded, tempDir, until } from '../helpers.js';

const nbd = { ...nbdServer, ...nbdClient };
const C = 64 << 10;

let dir: string;
let store: Store;
let image: Buffer;

beforeAll(async () => {
  dir = tempDir('nbdlimits');
  store = Store.open(join(dir, 'data'));
  image = Buffer.concat([seeded(2 * C, 9), Buffer.alloc(2 * C)]);
  writeFileSync(join(dir, 'a.raw'), image);
  await importImage(store, join(dir, 'a.raw'), 'lab', { chunkSize: C, workers: 1 });
});

/** A TCP connection that does nothing at all; resolves once it is connected. */
async function silent(port: number, localAddress: string): Promise<{ s: Socket; closed: Promise<void> }> {
  const s = connect({ port, host: '127.0.0.1', localAddress });
  s.on('error', () => undefined);
  s.resume(); // discard the greeting, so the server's close is seen
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  await new Promise<void>((r) => {
    s.once('connect', () => r());
    s.once('close', () => r());
  });
  return { s, closed };
}

/** The key holder: STARTTLS with the PSK, GO, one read of 64 bytes. */
async function readWithKey(port: number, pskHex: string, name: string): Promise<Buffer> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  let buf = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  const onData = (b: Buffer) => {
    buf = Buffer.concat([buf, b]);
    wake?.();
  };
  const read = async (n: number) => {
    while (buf.length < n) await new Promise<void>((r) => (wake = r));
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  s.on('data', onData);
  await read(18);
  s.write(nbd.encodeClientFlags(1));
  s.write(nbd.encodeOption(NBD.OPT_STARTTLS));
  expect(nbd.decodeOptionReplyHeader(await read(20))!.type).toBe(NBD.REP_ACK);
  s.off('data', onData);
  const t = tlsConnect({ socket: s, ciphers: PSK_CIPHERS, maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined, pskCallback: () => ({ identity: 'clonecast', psk: Buffer.from(pskHex, 'hex') }) });
  t.on('error', () => undefined);
  await new Promise<void>((r) => t.once('secureConnect', () => r()));
  t.on('data', onData);
  t.write(nbd.encodeOption(NBD.OPT_GO, nbd.encodeInfoRequest(name, [])));
  for (;;) {
    const h = nbd.decodeOptionReplyHeader(await read(20))!;
    await read(h.length);
    if (h.type === NBD.REP_ACK) break;
  }
  t.write(nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 1n, offset: 0n, length: 64 }));
  expect(nbd.decodeReplyHeader(await read(16))).toEqual({ kind: 'simple', error: 0, handle: 1n });
  const data = await read(64);
  t.destroy();
  return data;
}

describe('NBD exports against peers without the key', () => {
  let exports: NbdExports;
  afterAll(async () => {
    await exports?.close();
  });

  it('silent TCP connections do not block the key holder: those over the per-address cap are closed at once, the rest at the handshake deadline', async () => {
    exports = new NbdExports(store, '127.0.0.1', 600_000, { handshakeMs: 5000 });
    const o = await exports.offer('lab', 1);
    const srv = exports.servers[0];
    // 16 connections from another address that send nothing: the old server gave each a slot and never let go.
    const peers = await Promise.all(Array.from({ length: 16 }, () => silent(o.port, '127.0.0.2')));
    const seen = () => srv.handshakes + (srv.closed.busy ?? 0) + (srv.closed['handshake-timeout'] ?? 0);
    await until(() => seen() === 16, 10_000, 'every silent connection to be seen');
    expect(srv.closed.busy).toBeGreaterThanOrEqual(12);
    expect((await readWithKey(o.port, o.psk, o.export)).equals(image.subarray(0, 64))).toBe(true);
    await Promise.all(peers.map((p) => p.closed)); // the deadline ends the ones still waiting
    await until(() => (srv.closed['handshake-timeout'] ?? 0) + (srv.closed.busy ?? 0) === 16, 10_000, 'every silent connection to be counted closed');
    expect(srv.closed['handshake-timeout']).toBeGreaterThanOrEqual(1);
  });

  it('two addresses that keep every handshake slot full by reconnecting do not lock the key holder out (the busiest address gives up a slot)', async () => {
    const ex = new NbdExports(store, '127.0.0.1', 600_000);
    try {
      const o = await ex.offer('lab', 1);
      const srv = ex.servers[0];
      let stop = false;
      const hold = async (addr: string) => {
        while (!stop) await (await silent(o.port, addr)).closed;
      };
      const holders = ['127.0.0.2', '127.0.0.3'].flatMap((a) => Array.from({ length: 4 }, () => hold(a)));
      await until(() => srv.handshakes === 8, 10_000, 'the two addresses to fill every handshake slot');
      // Before, the newcomer was refused while the table was full: the key holder never got in.
      expect((await readWithKey(o.port, o.psk, o.export)).equals(image.subarray(0, 64))).toBe(true);
      stop = true;
      for (const s of [...srv['handshaking'].keys()]) s.destroy();
      await Promise.all(holders);
    } finally {
      await ex.close();
    }
  }, 60_000);

  it('connections stuck in the handshake do not keep an idle export open', async () => {
    const idle = new NbdExports(store, '127.0.0.1', 300, { handshakeMs: 600_000 });
    try {
      const o = await idle.offer('lab', 1);
      const peers = await Promise.all(Array.from({ length: 4 }, () => silent(o.port, '127.0.0.3')));
      await until(() => idle.count === 0, 20_000, 'the idle export to close');
      await Promise.all(peers.map((p) => p.closed));
    } finally {
      await idle.close();
    }
  });

  it('concurrent offers cannot open more than MAX_EXPORTS exports', async () => {
    const many = new NbdExports(store, '127.0.0.1');
    try {
      const results = await Promise.allSettled(Array.from({ length: 40 }, () => many.offer('lab', 1)));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(MAX_EXPORTS);
      expect(many.count).toBe(MAX_EXPORTS);
      for (const r of results) if (r.status === 'rejected') expect((r.reason as { code: string }).code).toMatch(/BUSY/);
    } finally {
      await many.close();
    }
  });
});

describe('an unauthenticated peer buffers little', () => {
  let server: Server;
  let serverSide: Socket | undefined;
  afterAll(() => {
    serverSide?.destroy();
    server?.close();
  });

  it('a client that floods options without reading replies is paused near HANDSHAKE_BUFFER, not at the 33 MiB transmission limit', async () => {
    const m = await store.readManifest('lab', 1);
    const source = new ImageSource(store, m);
    server = createServer((s) => {
      serverSide = s;
      void serveConnection(s, { lookup: () => source, names: () => ['lab@1'], requireTls: true, onReady: () => true, onRequest: () => undefined, onClose: () => undefined, handshakeMs: 600_000 });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    const c = connect(port, '127.0.0.1');
    c.on('error', () => undefined);
    await new Promise<void>((r) => c.once('connect', () => r()));
    c.pause(); // never read a reply: the server's sends block, and what it receives piles up
    const flood = Buffer.concat([nbd.encodeClientFlags(1), ...Array.from({ length: (40 << 20) / 16 }, () => nbd.encodeOption(NBD.OPT_LIST))]);
    c.write(flood);
    await until(() => serverSide !== undefined && serverSide.isPaused(), 60_000, 'the server to stop reading the flood');
    // Replies the kernel took before the server blocked account for the bytes consumed; buffering is bounded by the handshake limit.
    expect(serverSide!.bytesRead).toBeLessThan(TRANSMISSION_BUFFER / 2);
    expect(HANDSHAKE_BUFFER).toBeLessThan(1 << 20);
    c.destroy();
  }, 120_000);
});
