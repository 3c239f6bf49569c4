/**
 * The server's half of the authenticated data path, on loopback with a real
 * server: each Assign carries the session's data key and that machine's own
 * receiver key; the session secret is saved (a restarted server keeps the
 * keys) and never shown by the API; the sender serves a machine only with
 * its key, and only once it was assigned.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, decodeServerMessage, encodeAgentMessage, type Assign, type ServerMessage } from '../../protocol/control.js';
import { MacKey } from '../../protocol/mac.js';
import { encodeStatus, ReceiverState } from '../../protocol/mcast.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { serverFetch, serverSocket, tempDir, type TlsServer } from '../helpers.js';

async function until(cond: () => boolean, ms = 15_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A hand-driven agent: says hello with one disk, records what the server sends. */
async function fakeAgent(srv: TlsServer, token: string, mac: string) {
  const ws = serverSocket(srv, CONTROL.AGENT_PATH);
  const got: ServerMessage[] = [];
  ws.on('message', (d) => got.push(decodeServerMessage(d as Buffer)));
  ws.on('error', () => {});
  await new Promise<void>((r) => ws.on('open', () => r()));
  ws.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token, machineId: mac, macs: [mac], hostname: `pc-${mac.slice(-2)}`, agentVersion: 'test', disks: [{ device: '/dev/vda', size: 1 << 30, logicalSector: 512, physicalSector: 512 }] } }));
  await until(() => got.some((m) => m.type === 'welcome'));
  const assign = async (): Promise<Assign> => {
    await until(() => got.some((m) => m.type === 'assign'), 10_000, 'the assign');
    return (got.find((m) => m.type === 'assign') as { assign: Assign }).assign;
  };
  return { ws, got, assign };
}

describe('session keys', () => {
  const dir = tempDir('keys');
  const data = join(dir, 'data');
  let srv: RunningServer;

  beforeAll(async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, randomBytes(2 << 20));
    const store = Store.open(data);
    await importImage(store, image, 'img', { workers: 1 });
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
  });
  afterAll(async () => srv?.close());

  const api = async (path: string, body?: unknown) => {
    const res = await serverFetch(srv, path, { method: body === undefined ? 'GET' : 'POST', headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, text: await res.text() };
  };

  it('each Assign carries the data key and that machine\'s own key; the secret is saved, kept across a restart and never shown', async () => {
    const a = await fakeAgent(srv, srv.token, '02:00:00:00:0b:01');
    const b = await fakeAgent(srv, srv.token, '02:00:00:00:0b:02');
    const made = await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0b:01', '02:00:00:00:0b:02'] } });
    expect(made.status).toBe(201);
    const id = JSON.parse(made.text).id as number;
    const [aa, ab] = [await a.assign(), await b.assign()];
    for (const x of [aa, ab]) {
      expect(x.dataKey?.length).toBe(32);
      expect(x.receiverKey?.length).toBe(32);
      expect(x.encryptKey?.length).toBe(0);
    }
    expect(Buffer.from(aa.dataKey!).equals(Buffer.from(ab.dataKey!))).toBe(true);
    expect(Buffer.from(aa.receiverKey!).equals(Buffer.from(ab.receiverKey!))).toBe(false);
    expect(Buffer.from(aa.receiverKey!).equals(Buffer.from(aa.dataKey!))).toBe(false);

    const secret = srv.sessions.get(id)!.secret;
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    for (const path of ['/api/sessions', `/api/sessions/${id}`, '/api/state']) {
      const r = await api(path);
      expect(r.status, path).toBe(200);
      expect(r.text, path).not.toContain(secret);
      expect(r.text, path).not.toContain('"secret"');
    }
    // Saved with the session, so that a restarted server keeps the keys.
    await until(() => readFileSync(join(data, 'sessions.json'), 'utf8').includes(secret), 10_000, 'the secret to be saved');
    const sender = srv.sessions.senders().find((s) => s.id === id)!.sender;
    expect(sender.dataKey.equals(Buffer.from(aa.dataKey!))).toBe(true);

    // The sender serves machine a with a's key only: a report under b's key for a's id, or for an unassigned id, makes no peer.
    const sock = createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    const report = (receiver: number, key: Uint8Array, seq: number) =>
      sock.send(encodeStatus({ session: aa.sessionKey!, seq, receiver, state: ReceiverState.RECEIVING, queueFill: 0, done: 0, wanted: 1, received: 0, lost: 0, windowStart: 0, windowEnd: 0, rttMs: 0, incarnation: 1, ranges: [], repairs: [] }, new MacKey(key)), aa.senderPort!, aa.senderAddress!);
    report(aa.receiverId!, ab.receiverKey!, 1);
    report(12345, aa.receiverKey!, 2);
    await until(() => sender.counters.dropped.badMac + sender.counters.dropped.unknownReceiver >= 2, 5000, 'the two reports to be refused');
    expect(sender.receivers()).toEqual([]);
    report(aa.receiverId!, aa.receiverKey!, 3);
    await until(() => sender.receivers().length === 1, 5000, 'a to be served');
    expect(sender.receivers()[0].receiverId).toBe(aa.receiverId);
    sock.close();
    a.ws.close();
    b.ws.close();
    // A restarted server restores the session with the same secret: the keys the agents hold still work.
    await srv.close();
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
    await until(() => srv.sessions.senders().some((s) => s.id === id), 10_000, 'the session to be restored');
    const again = srv.sessions.senders().find((s) => s.id === id)!.sender;
    expect(again.dataKey.equals(Buffer.from(aa.dataKey!))).toBe(true);
    expect(again.receiverKeyFor(aa.receiverId!).equals(Buffer.from(aa.receiverKey!))).toBe(true);
  }, 60_000);

  it('an encrypted session gives its machines the encryption key, and only through the Assign', async () => {
    const c = await fakeAgent(srv, srv.token, '02:00:00:00:0b:03');
    const made = await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0b:03'] }, encrypt: true });
    expect(made.status).toBe(201);
    const id = JSON.parse(made.text).id as number;
    const ac = await c.assign();
    const sender = srv.sessions.senders().find((s) => s.id === id)!.sender;
    expect(ac.encryptKey?.length).toBe(32);
    expect(Buffer.from(ac.encryptKey!).equals(sender.encryptKey)).toBe(true);
    expect(Buffer.from(ac.encryptKey!).equals(Buffer.from(ac.dataKey!))).toBe(false);
    expect((await api(`/api/sessions/${id}`)).text).not.toContain(Buffer.from(ac.encryptKey!).toString('hex'));
    expect((await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0b:04'] }, encrypt: 'yes' })).status).toBe(400);
    c.ws.close();
  }, 60_000);
});
