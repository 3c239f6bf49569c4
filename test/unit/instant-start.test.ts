/**
 * Instant start: a session starts the moment its rule is met, not at the
 * next tick of a timer. The server's housekeeping timer and the agents'
 * progress reports are slowed to ten minutes here, so a session that still
 * starts and ends within the test's timeout started on events alone (the
 * last machine joining, a rule's time falling due); and the sender sends
 * on release() itself, with its pacing timer never firing.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Agent } from '../../agent/agent.js';
import { Sender } from '../../transfer/sender.js';
import { chunkAt } from '../../protocol/manifest.js';
import { decode, encodeStatus, PacketType, ReceiverState } from '../../protocol/mcast.js';
import { MacKey } from '../../protocol/mac.js';
import { nextDue } from '../../server/session-rules.js';
import { FakeNetwork } from './fake-network.js';
import { serverFetch, tempDir, until } from '../helpers.js';

const SLOW = 10 * 60_000;


describe('a session starts when its rule is met, with no timer in between', () => {
  const dir = tempDir('instant');
  const data = join(dir, 'data');
  const image = join(dir, 'disk.img');
  let srv: RunningServer;
  const logs: string[] = [];

  const api = async (path: string, body?: unknown) => {
    const res = await serverFetch(srv, path, { method: body === undefined ? 'GET' : 'POST', headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };

  beforeAll(async () => {
    const bytes = Buffer.alloc(4 << 20);
    randomBytes(2 << 20).copy(bytes, 1 << 20);
    writeFileSync(image, bytes);
    await importImage(Store.open(data), image, 'img', { workers: 1 });
    // Housekeeping and progress reports every ten minutes: nothing in this test may wait for them.
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000, sessionTickMs: SLOW, progressMs: SLOW, log: (_l, m) => logs.push(m) });
  });
  afterAll(async () => {
    await srv?.close();
  });

  async function agents(macs: string[]) {
    const disks = macs.map((_, i) => {
      const p = join(dir, `pc-${macs[i].slice(-2)}.img`);
      writeFileSync(p, Buffer.alloc(4 << 20));
      return p;
    });
    const list = macs.map((machineId, i) => new Agent({ server: srv.url, fingerprint: srv.fingerprint, token: srv.token, disk: disks[i], machineId, version: 'test' }));
    const runs = list.map((a) => a.run().catch(() => undefined));
    await until(() => macs.every((m) => srv.registry.get(m)?.online === true), 15_000, 'the agents to connect');
    return {
      disks,
      stop: async () => {
        for (const a of list) a.stop();
        await Promise.all(runs);
      },
    };
  }

  it('starts when the last listed machine has joined (server timer and progress reports at 10 minutes)', async () => {
    const macs = ['02:00:00:00:1a:01', '02:00:00:00:1a:02'];
    const a = await agents(macs);
    const s = await api('/api/sessions', { image: 'img', rule: { machines: macs }, rateMbit: 200 });
    expect(s.status).toBe(201);
    await until(() => ['done', 'failed'].includes(srv.sessions.get(s.body.id)!.state), 60_000, 'the session to end').catch((e) => {
      console.log(JSON.stringify(srv.sessions.get(s.body.id), null, 1), logs.join('\n'));
      throw e;
    });
    const session = srv.sessions.get(s.body.id)!;
    expect(session.state).toBe('done');
    expect(logs.some((l) => l === `session ${s.body.id} started: every listed machine joined`)).toBe(true);
    const want = readFileSync(image);
    for (const d of a.disks) expect(readFileSync(d).equals(want)).toBe(true);
    await a.stop();
  }, 90_000);

  it('starts when the time of a "wait" rule falls due, on its own timer', async () => {
    const macs = ['02:00:00:00:1b:01'];
    const a = await agents(macs);
    // The second listed machine never comes: only the wait can start it.
    const s = await api('/api/sessions', { image: 'img', rule: { machines: [...macs, '02:00:00:00:1b:99'], waitS: 1 }, rateMbit: 200 });
    expect(s.status).toBe(201);
    await until(() => ['done', 'failed'].includes(srv.sessions.get(s.body.id)!.state), 60_000, 'the session to end');
    expect(srv.sessions.get(s.body.id)!.state).toBe('done');
    expect(logs.some((l) => l === `session ${s.body.id} started: 1 s since the first one joined`)).toBe(true);
    await a.stop();
  }, 90_000);
});

describe('the start clock', () => {
  it('is due at the wait after the first join, or at the time given, whichever comes first and is still ahead', () => {
    const first = Date.parse('2026-01-01T00:00:00Z');
    const s = { rule: { machines: ['02:00:00:00:00:01'], waitS: 30, at: '2026-01-01T00:01:00Z' }, firstJoinAt: new Date(first).toISOString(), machines: {} };
    expect(nextDue(s, first)).toBe(first + 30_000);
    expect(nextDue(s, first + 30_000)).toBe(first + 60_000); // the wait is past (evaluated already): the time is next
    expect(nextDue(s, first + 60_000)).toBeNull();
    expect(nextDue({ ...s, firstJoinAt: null }, first)).toBe(first + 60_000); // nobody joined: the wait has not begun
    expect(nextDue({ rule: { clients: 3, any: true }, firstJoinAt: null, machines: {} }, first)).toBeNull(); // joins only: no timer
  });
});

describe('release() sends at once', () => {
  it('the first DATA packet leaves on release(), with the pacing timer never firing', async () => {
    const dir = tempDir('release');
    const store = Store.open(join(dir, 'data'));
    const src = join(dir, 'disk.img');
    writeFileSync(src, randomBytes(256 << 10));
    await importImage(store, src, 'rel', { chunkSize: 64 << 10, workers: 1 });
    const { name, version } = store.resolve(parseRef('rel'));
    const manifest = await store.readManifest(name, version);
    const net = new FakeNetwork(3);
    // The sender's intervals (pacing tick, rate control) are fake and never advanced: only release() can send.
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      const sender = new Sender({ manifest, loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256), group: '239.77.0.1', port: 9000, address: '10.0.0.1', rateMbit: 100, fragmentSize: 1000, createSocket: net.factory('10.0.0.1'), openAdmission: true, hold: true });
      const port = await sender.start();
      const sock = net.factory('10.0.0.20')();
      let data = 0;
      let acks = 0;
      sock.on('message', (m) => {
        const p = decode(m);
        if (p?.type === PacketType.DATA) data++;
        if (p?.type === PacketType.ACK) acks++;
      });
      await new Promise<void>((r) => sock.bind(9000, undefined, r));
      sock.addMembership('239.77.0.1');
      const status = { session: sender.session, seq: 1, receiver: 7, state: ReceiverState.RECEIVING, queueFill: 0, done: 0, wanted: 4, received: 0, lost: 0, windowStart: 0, windowEnd: 4, rttMs: 0, incarnation: 1, ranges: [{ first: 0, count: 4 }], repairs: [] };
      sock.send(encodeStatus(status, new MacKey(sender.receiverKeyFor(7))), port, '10.0.0.1');
      await until(() => acks > 0, 10_000, 'the sender to answer the STATUS');
      await new Promise((r) => setTimeout(r, 50));
      expect(data).toBe(0); // held: nothing before release()
      sender.release();
      await until(() => data > 0, 10_000, 'the first DATA packet after release()');
      expect(data).toBeGreaterThan(0);
      sender.stop();
      sock.close();
    } finally {
      vi.useRealTimers();
    }
  });
});
