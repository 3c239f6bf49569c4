import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { readdirSync, readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as nbdServer from '../../protocol/nbd.js';
import * as nbdClient from '../../protocol/nbd-client.js';

const nbd = { ...nbdServer, ...nbdClient };
import { NBD } from '../../protocol/nbd.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { NbdServer } from '../../server/nbd/server.js';
import { NbdClient } from '../../server/nbd/client.js';
import { newPsk, writePskDir, PSK_CIPHERS } from '../../server/nbd/tls.js';
import { itNeeds, seeded, tempDir, until } from '../helpers.js';

const C = 64 << 10;
let dir: string;
let store: Store;
let image: Buffer;
let server: NbdServer;
let sock: string;

/** A raw byte-level client: send what a test wants, read what comes back, see when the server closes. */
class Raw {
  private buf = Buffer.alloc(0);
  closed = false;
  private wake: (() => void) | undefined;
  constructor(readonly s: Socket) {
    s.on('data', (b) => {
      this.buf = Buffer.concat([this.buf, b]);
      this.wake?.();
    });
    s.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    s.on('error', () => undefined);
  }
  static async open(path: string): Promise<Raw> {
    const s = connect(path);
    await new Promise((r) => s.once('connect', r));
    return new Raw(s);
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  send(b: Buffer): void {
    this.s.write(b);
  }
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => (this.wake = r));
  }
  /** Greeting, flags, structured replies, base:allocation, GO. */
  async handshake(name = 'lab@1'): Promise<void> {
    expect(nbd.decodeGreeting(await this.read(18))).not.toBeNull();
    this.send(nbd.encodeClientFlags(NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES));
    this.send(nbd.encodeOption(NBD.OPT_STRUCTURED_REPLY));
    expect(nbd.decodeOptionReplyHeader(await this.read(20))!.type).toBe(NBD.REP_ACK);
    this.send(nbd.encodeOption(NBD.OPT_GO, nbd.encodeInfoRequest(name, [])));
    for (;;) {
      const h = nbd.decodeOptionReplyHeader(await this.read(20))!;
      await this.read(h.length);
      if (h.type === NBD.REP_ACK) return;
      expect(h.type).toBe(NBD.REP_INFO);
    }
  }
  /** The next option reply's type. */
  async optionReply(): Promise<number> {
    const h = nbd.decodeOptionReplyHeader(await this.read(20))!;
    await this.read(h.length);
    return h.type;
  }
}

beforeAll(async () => {
  dir = tempDir('nbd');
  store = Store.open(join(dir, 'data'));
  // 1 MiB: chunks 0-3 data, 4-11 zero, 12-15 data.
  image = Buffer.alloc(1 << 20);
  seeded(4 * C, 1).copy(image, 0);
  seeded(4 * C, 2).copy(image, 12 * C);
  writeFileSync(join(dir, 'lab.raw'), image);
  await importImage(store, join(dir, 'lab.raw'), 'lab', { chunkSize: C, workers: 1 });
  server = new NbdServer(store, { maxConnections: 4, maxHandshakes: 4 });
  await server.add({ name: 'lab', version: 1 });
  sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
});

afterAll(async () => {
  await server?.close();
});

describe('NBD export server', () => {
  it('serves the version: reads match, zero chunks are HOLE|ZERO, data chunks are data; the socket is mode 0600', async () => {
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    const c = await NbdClient.connectUnix(sock, 'lab@1');
    expect(c.size).toBe(image.length);
    expect(c.hasBlockStatus).toBe(true);
    expect((await c.read(3 * C - 100, 2 * C + 200)).equals(image.subarray(3 * C - 100, 5 * C + 100))).toBe(true);
    expect((await c.read(0, image.length)).equals(image)).toBe(true);
    expect(await c.blockStatus(0, image.length)).toEqual([
      { length: 4 * C, flags: 0 },
      { length: 8 * C, flags: NBD.STATE_HOLE | NBD.STATE_ZERO },
      { length: 4 * C, flags: 0 },
    ]);
    c.close();
  });

  it('holds a store reader lock while it serves', () => {
    const locks = readdirSync(join(store.root, 'locks')).filter((f) => f.startsWith('reader-'));
    expect(locks.map((f) => readFileSync(join(store.root, 'locks', f), 'utf8'))).toEqual([expect.stringContaining('serving NBD exports')]);
  });

  it('a request before GO (bad option magic) closes that connection only; a client mid-transfer is undisturbed', async () => {
    const good = await NbdClient.connectUnix(sock, 'lab@1');
    const bad = await Raw.open(sock);
    await bad.read(18);
    bad.send(nbd.encodeClientFlags(1));
    bad.send(nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 1n, offset: 0n, length: 512 }));
    await bad.waitClosed();
    expect((await good.read(12 * C, C)).equals(image.subarray(12 * C, 13 * C))).toBe(true);
    good.close();
  });

  it('bad client flags close the connection', async () => {
    const before = server.closed['bad-flags'] ?? 0;
    const r = await Raw.open(sock);
    await r.read(18);
    r.send(Buffer.from('GET / HTTP/1.1\r\n'));
    await r.waitClosed();
    await until(() => (server.closed['bad-flags'] ?? 0) === before + 1, 10_000, 'the bad-flags close to be counted');
  });

  it('an oversized READ is answered EOVERFLOW and the connection closed', async () => {
    const r = await Raw.open(sock);
    await r.handshake();
    r.send(nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 5n, offset: 0n, length: (32 << 20) + 1 }));
    const h = nbd.decodeReplyHeader(await r.read(20))!;
    expect(h).toMatchObject({ kind: 'structured', type: NBD.REPLY_TYPE_ERROR, handle: 5n });
    expect(nbd.decodeStructuredError(await r.read((h as { length: number }).length))!.error).toBe(NBD.EOVERFLOW);
    await r.waitClosed();
  });

  it('a WRITE on the read-only export is answered EPERM and the connection closed', async () => {
    const r = await Raw.open(sock);
    await r.handshake();
    r.send(nbd.encodeRequest({ flags: 0, type: NBD.CMD_WRITE, handle: 6n, offset: 0n, length: 4 }));
    r.send(Buffer.from('evil'));
    expect(nbd.decodeReplyHeader(await r.read(16))).toEqual({ kind: 'simple', error: NBD.EPERM, handle: 6n });
    await r.waitClosed();
    const c = await NbdClient.connectUnix(sock, 'lab@1');
    expect((await c.read(0, 16)).equals(image.subarray(0, 16))).toBe(true); // the store is unchanged
    c.close();
  });

  it('a bad request magic, an unknown command and an out-of-range read', async () => {
    const r = await Raw.open(sock);
    await r.handshake();
    r.send(nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 7n, offset: BigInt(image.length - 8), length: 16 }));
    const h = nbd.decodeReplyHeader(await r.read(20)) as { length: number; type: number };
    expect(h.type).toBe(NBD.REPLY_TYPE_ERROR);
    expect(nbd.decodeStructuredError(await r.read(h.length))!.error).toBe(NBD.EINVAL);
    const garbage = nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 8n, offset: 0n, length: 1 });
    garbage.writeUInt32BE(0xdeadbeef, 0);
    r.send(garbage);
    await r.waitClosed();
    const u = await Raw.open(sock);
    await u.handshake();
    u.send(nbd.encodeRequest({ flags: 0, type: 99, handle: 9n, offset: 0n, length: 1 }));
    await u.waitClosed();
  });

  it('an unknown export is refused; an over-long option is refused and closed; STARTTLS on the Unix socket is unsupported', async () => {
    const r = await Raw.open(sock);
    await r.read(18);
    r.send(nbd.encodeClientFlags(1));
    r.send(nbd.encodeOption(NBD.OPT_GO, nbd.encodeInfoRequest('nope@9', [])));
    expect(await r.optionReply()).toBe(NBD.REP_ERR_UNKNOWN);
    r.send(nbd.encodeOption(NBD.OPT_STARTTLS));
    expect(await r.optionReply()).toBe(NBD.REP_ERR_UNSUP);
    r.send(nbd.encodeOption(NBD.OPT_LIST));
    expect(await r.optionReply()).toBe(NBD.REP_SERVER);
    expect(await r.optionReply()).toBe(NBD.REP_ACK);
    const huge = Buffer.alloc(16);
    nbd.encodeOption(NBD.OPT_GO).copy(huge);
    huge.writeUInt32BE(0x7fffffff, 12); // claims 2 GiB of option data
    r.send(huge);
    expect(await r.optionReply()).toBe(NBD.REP_ERR_TOO_BIG);
    await r.waitClosed();
  });

  it('caps connections in the handshake: one over the limit is closed at once', async () => {
    const held = await Promise.all([1, 2, 3, 4].map(() => Raw.open(sock)));
    await Promise.all(held.map((h) => h.read(18)));
    const extra = await Raw.open(sock);
    await extra.waitClosed();
    for (const h of held) h.s.destroy();
    await until(() => server.connections === 0, 10_000, 'every connection to close');
  });
});

describe('NBD over TCP requires TLS-PSK', () => {
  let tcp: NbdServer;
  let port: number;
  const psk = newPsk();
  beforeAll(async () => {
    tcp = new NbdServer(store);
    await tcp.add({ name: 'lab', version: 1 });
    port = await tcp.listenTls('127.0.0.1', 0, psk.options);
  });
  afterAll(async () => {
    await tcp?.close();
  });

  it('a plain client gets nothing but STARTTLS: every other option is NBD_REP_ERR_TLS_REQD; garbage after that closes it', async () => {
    const s = connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    const r = new Raw(s);
    await r.read(18);
    r.send(nbd.encodeClientFlags(1));
    for (const opt of [NBD.OPT_GO, NBD.OPT_LIST, NBD.OPT_INFO, NBD.OPT_STRUCTURED_REPLY]) {
      r.send(nbd.encodeOption(opt, opt === NBD.OPT_GO || opt === NBD.OPT_INFO ? nbd.encodeInfoRequest('lab@1', []) : undefined));
      expect(await r.optionReply()).toBe(NBD.REP_ERR_TLS_REQD);
    }
    r.send(Buffer.from('x'.repeat(40)));
    await r.waitClosed();
  });

  it('a client with the PSK starts TLS and reads; one with another key is refused', async () => {
    const tryKey = async (key: Buffer): Promise<Buffer | null> => {
      const s = connect(port, '127.0.0.1');
      await new Promise((r) => s.once('connect', r));
      const r = new Raw(s);
      await r.read(18);
      r.send(nbd.encodeClientFlags(1));
      r.send(nbd.encodeOption(NBD.OPT_STARTTLS));
      expect(await r.optionReply()).toBe(NBD.REP_ACK);
      s.removeAllListeners('data');
      const t = tlsConnect({ socket: s, ciphers: PSK_CIPHERS, maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined, pskCallback: () => ({ identity: 'clonecast', psk: key }) });
      t.on('error', () => undefined);
      const ok = await new Promise<boolean>((res) => {
        t.once('secureConnect', () => res(true));
        t.once('close', () => res(false));
      });
      if (!ok) return null;
      const rt = new Raw(t as unknown as Socket);
      rt.send(nbd.encodeOption(NBD.OPT_GO, nbd.encodeInfoRequest('lab@1', [])));
      while ((await rt.optionReply()) !== NBD.REP_ACK);
      rt.send(nbd.encodeRequest({ flags: 0, type: NBD.CMD_READ, handle: 1n, offset: 0n, length: 64 }));
      expect(nbd.decodeReplyHeader(await rt.read(16))).toEqual({ kind: 'simple', error: 0, handle: 1n });
      const data = await rt.read(64);
      t.destroy();
      return data;
    };
    expect((await tryKey(Buffer.from(psk.keyHex, 'hex')))!.equals(image.subarray(0, 64))).toBe(true);
    expect(await tryKey(Buffer.alloc(32, 7))).toBeNull();
  });

  itNeeds(['qemu-utils'], 'qemu-img reads the export over TLS-PSK (tls-creds-psk)', async () => {
    const pskDir = writePskDir(join(dir, 'psk'), psk);
    // Not spawnSync: the server runs in this process and must keep answering.
    const r = await promisify(execFile)('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls0,dir=${pskDir},username=clonecast,endpoint=client`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=lab@1,tls-creds=tls0`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)['virtual-size']).toBe(image.length);
  });
});
