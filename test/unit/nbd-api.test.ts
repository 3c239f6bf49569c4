import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { NbdExports } from '../../server/nbd/exports.js';
import { writePskDir } from '../../server/nbd/tls.js';
import '../../native/addon.js';
import { itNeeds, seeded, serverFetch, tempDir, until } from '../helpers.js';

const C = 64 << 10;

describe('NBD exports offered by the server', () => {
  const dir = tempDir('nbdapi');
  let srv: RunningServer;
  let store: Store;
  beforeAll(async () => {
    store = Store.open(join(dir, 'data'));
    writeFileSync(join(dir, 'a.raw'), Buffer.concat([seeded(2 * C, 5), Buffer.alloc(6 * C)]));
    await importImage(store, join(dir, 'a.raw'), 'lab', { chunkSize: C, workers: 1 });
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
  });
  afterAll(async () => {
    await srv?.close();
  });

  const offer = (path: string, token = srv.token) => serverFetch(srv, path, { method: 'POST', headers: { authorization: `Bearer ${token}` } });

  it('needs the token; an unknown image is 404', async () => {
    expect((await offer('/api/images/lab/1/nbd', 'wrong')).status).toBe(401);
    const r = await offer('/api/images/nope/1/nbd');
    expect(r.status).toBe(404);
  });

  itNeeds(['qemu-utils'], 'a token holder gets a TLS-PSK export that qemu-img reads', async () => {
    const r = await offer('/api/images/lab/1/nbd');
    expect(r.status).toBe(201);
    const o = (await r.json()) as { host: string; port: number; export: string; identity: string; psk: string; size: number; qemuImg: string };
    expect(o).toMatchObject({ host: '127.0.0.1', export: 'lab@1', identity: 'clonecast', size: 8 * C });
    expect(o.psk).toMatch(/^[0-9a-f]{64}$/);
    const pskDir = writePskDir(join(dir, 'psk'), { identity: o.identity, keyHex: o.psk, options: {} });
    const cmd = o.qemuImg.replace('DIR', pskDir).split(' ');
    const { stdout } = await promisify(execFile)(cmd[0], [...cmd.slice(1, 2), '--output=json', ...cmd.slice(2)]);
    expect(JSON.parse(stdout)['virtual-size']).toBe(8 * C);
  });
});

describe('NbdExports closes idle exports', () => {
  it('an export with no client for idleMs stops listening', async () => {
    const dir = tempDir('nbdidle');
    const store = Store.open(join(dir, 'data'));
    writeFileSync(join(dir, 'a.raw'), seeded(2 * C, 6));
    await importImage(store, join(dir, 'a.raw'), 'lab', { chunkSize: C, workers: 1 });
    const exports = new NbdExports(store, '127.0.0.1', 300);
    try {
      const o = await exports.offer('lab', 1);
      expect(exports.count).toBe(1);
      const refused = () =>
        new Promise<boolean>((res) => {
          const s = connect(o.port, '127.0.0.1');
          s.once('connect', () => (s.destroy(), res(false)));
          s.once('error', () => res(true));
        });
      expect(await refused()).toBe(false);
      await until(() => exports.count === 0, 20_000, 'the idle export to close');
      await until(refused, 20_000, 'the port to refuse connections');
    } finally {
      await exports.close();
    }
  });
});
