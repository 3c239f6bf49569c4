/**
 * One owner per machine, on loopback with a real server: the races and
 * overlaps the old structure allowed, each performed and refused. Named
 * after what broke.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, decodeServerMessage, encodeAgentMessage, type ServerMessage } from '../../protocol/control.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Agent } from '../../agent/agent.js';
import { serverFetch, serverSocket, tempDir, type TlsServer } from '../helpers.js';

/** A hand-driven agent connection: says hello with one disk, records what the server sends. */
async function fakeAgent(url: TlsServer, token: string, mac: string, extra: { macs?: string[]; hostname?: string } = {}) {
  const ws = serverSocket(url, CONTROL.AGENT_PATH);
  const got: ServerMessage[] = [];
  ws.on('message', (d) => got.push(decodeServerMessage(d as Buffer)));
  ws.on('error', () => {});
  await new Promise<void>((r) => ws.on('open', () => r()));
  ws.send(
    encodeAgentMessage({
      type: 'hello',
      hello: { protocol: CONTROL.VERSION, token, machineId: mac, macs: extra.macs ?? [mac], hostname: extra.hostname ?? `pc-${mac.slice(-2)}`, agentVersion: 'test', disks: [{ device: '/dev/vda', size: 1 << 30, logicalSector: 512, physicalSector: 512 }] },
    }),
  );
  await until(() => got.some((m) => m.type === 'welcome'));
  return { ws, got, closed: new Promise<void>((r) => ws.on('close', () => r())) };
}

async function until(cond: () => boolean, ms = 15_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('one owner per machine', () => {
  const dir = tempDir('own');
  const data = join(dir, 'data');
  let srv: RunningServer;
  const image = join(dir, 'disk.img');

  const api = async (path: string, body?: unknown, method = body === undefined ? 'GET' : 'POST') => {
    const res = await serverFetch(srv, path, { method, headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };

  beforeAll(async () => {
    // 4 MiB: two chunks of data, two of zeros.
    const bytes = Buffer.alloc(4 << 20);
    randomBytes(2 << 20).copy(bytes, 1 << 20);
    writeFileSync(image, bytes);
    const store = Store.open(data);
    await importImage(store, image, 'img', { workers: 1 });
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000, captureLostAfterS: 5 });
  });
  afterAll(async () => srv?.close());

  it('two concurrent session creations get distinct ids, groups and ports, and no sender is orphaned', async () => {
    const rule = { machines: ['02:00:00:00:09:99'] };
    const made = await Promise.all(Array.from({ length: 4 }, () => api('/api/sessions', { image: 'img', rule })));
    expect(made.map((m) => m.status)).toEqual([201, 201, 201, 201]);
    const ids = new Set(made.map((m) => m.body.id));
    const groups = new Set(made.map((m) => `${m.body.group}:${m.body.port}`));
    expect(ids.size).toBe(4);
    expect(groups.size).toBe(4);
    // Every sender belongs to a listed session: cancelling them all leaves none running.
    expect(srv.sessions.senders().map((s) => s.id).sort()).toEqual([...ids].sort());
    for (const id of ids) expect((await api(`/api/sessions/${id}/cancel`, {})).status).toBe(200);
    expect(srv.sessions.senders()).toEqual([]);
  });

  it('refuses a session that does not say which machines take part', async () => {
    const r = await api('/api/sessions', { image: 'img', rule: { clients: 2 } });
    expect(r.status).toBe(400);
    expect(r.body.error.message).toMatch(/say which machines take part/);
    // Hostile field values are named and refused before anything is made.
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ after: 'constructor' }, /after must be wait, reboot or poweroff/],
      [{ rateMbit: '100; rm -rf' }, /rateMbit must be a number/],
      [{ target: '../../etc/passwd' }, /target must be "auto" or a device path/],
      [{ differential: 'yes' }, /differential must be true or false/],
      [{ nameMachines: 'no' }, /nameMachines must be true or false/],
      [{ wake: 'yes' }, /wake must be true or false/],
      [{ discard: 1 }, /discard must be true or false/],
      [{ growLast: 'yes' }, /growLast must be true or false/],
      [{ rule: { any: true, clients: 1e9 } }, /clients must be a whole number/],
    ];
    for (const [fields, message] of bad) {
      const refused = await api('/api/sessions', { image: 'img', rule: { any: true }, ...fields });
      expect(refused.status, JSON.stringify(fields)).toBe(400);
      expect(refused.body.error.message).toMatch(message);
    }
    expect(srv.sessions.list().filter((x) => x.state === 'waiting' || x.state === 'running')).toEqual([]);
  });

  it('a deploy cannot take a machine under capture, and a capture cannot start on a machine in a session', async () => {
    const a = await fakeAgent(srv, srv.token, '02:00:00:00:0a:01');
    const b = await fakeAgent(srv, srv.token, '02:00:00:00:0a:02');
    const cap = await api('/api/captures', { machine: '02:00:00:00:0a:01', image: 'golden' });
    expect(cap.status).toBe(201);
    await until(() => a.got.some((m) => m.type === 'capture'), 5000, 'the capture command');
    // A session naming both takes only b: a is being read.
    const s = await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0a:01', '02:00:00:00:0a:02'] } });
    expect(s.status).toBe(201);
    await until(() => b.got.some((m) => m.type === 'assign'), 5000, 'b assigned');
    await new Promise((r) => setTimeout(r, 200));
    expect(a.got.some((m) => m.type === 'assign')).toBe(false);
    const session = (await api(`/api/sessions/${s.body.id}`)).body;
    expect(Object.keys(session.machines)).toEqual(['02:00:00:00:0a:02']);
    // b is held by the session: a capture of it is refused, and says why.
    const busy = await api('/api/captures', { machine: '02:00:00:00:0a:02', image: 'other' });
    expect(busy.status).toBe(409);
    expect(busy.body.error.message).toMatch(/busy \(session \d+\)/);
    expect(b.got.some((m) => m.type === 'capture')).toBe(false);
    // Failing a's capture by hand frees it, and the waiting session takes it.
    const failed = await api(`/api/captures/${cap.body.id}/fail`, { reason: 'wrong machine' });
    expect(failed.body).toMatchObject({ state: 'failed', error: 'failed by the administrator: wrong machine' });
    await until(() => a.got.some((m) => m.type === 'assign'), 5000, 'a assigned once free');
    expect((await api(`/api/sessions/${s.body.id}/cancel`, {})).status).toBe(200);
    a.ws.close();
    b.ws.close();
  });

  it('a machine that lists another machine\'s MAC as its own is not taken for that MAC, and its host name loses its terminal escapes', async () => {
    const intruder = await fakeAgent(srv, srv.token, '02:00:00:00:0a:66', { macs: ['02:00:00:00:0a:66', '02:00:00:00:0a:77'], hostname: 'pc\x1b[2J\x1b]0;owned\x07' });
    const s = await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0a:77'] } });
    expect(s.status).toBe(201);
    await new Promise((r) => setTimeout(r, 300));
    expect(intruder.got.some((m) => m.type === 'assign')).toBe(false);
    expect(srv.registry.get('02:00:00:00:0a:66')?.hostname).toBe('pc?[2J?]0;owned?');
    await api(`/api/sessions/${s.body.id}/cancel`, {});
    intruder.ws.close();
  });

  it('a capture whose agent disappears ends with a reason and frees the machine', async () => {
    const a = await fakeAgent(srv, srv.token, '02:00:00:00:0b:01');
    const cap = await api('/api/captures', { machine: '02:00:00:00:0b:01', image: 'lost' });
    expect(cap.status).toBe(201);
    a.ws.terminate();
    await until(() => srv.captures.get(cap.body.id).state !== 'running', 20_000, 'the capture to end');
    const c = srv.captures.get(cap.body.id);
    expect(c.state).toBe('failed');
    expect(c.error).toMatch(/agent has been gone for \d+ s/);
    expect(srv.registry.get('02:00:00:00:0b:01')?.activity).toEqual({ kind: 'idle' });
    // The image name is free again.
    const again = await fakeAgent(srv, srv.token, '02:00:00:00:0b:01');
    const next = await api('/api/captures', { machine: '02:00:00:00:0b:01', image: 'lost' });
    expect(next.status).toBe(201);
    await api(`/api/captures/${next.body.id}/fail`, { reason: 'test over' });
    again.ws.close();
  });

  it('deploy --clients 2 with 3 idle agents touches exactly 2 disks', async () => {
    const disks = [1, 2, 3].map((i) => {
      const p = join(dir, `pc${i}.img`);
      writeFileSync(p, Buffer.alloc(4 << 20));
      return p;
    });
    const agents = disks.map((disk, i) => new Agent({ server: srv.url, fingerprint: srv.fingerprint, token: srv.token, disk, machineId: `02:00:00:00:0c:0${i + 1}`, version: 'test' }));
    const runs = agents.map((a) => a.run().catch(() => undefined));
    await until(() => agents.every((_, i) => srv.registry.get(`02:00:00:00:0c:0${i + 1}`)?.online === true), 10_000, 'three agents');
    const s = await api('/api/sessions', { image: 'img', rule: { any: true, clients: 2 }, rateMbit: 200 });
    expect(s.status).toBe(201);
    await until(() => ['done', 'failed'].includes(srv.sessions.get(s.body.id)!.state), 30_000, 'the session to end');
    const session = srv.sessions.get(s.body.id)!;
    expect(session.state).toBe('done');
    expect(Object.keys(session.machines)).toHaveLength(2);
    const want = readFileSync(image);
    const written = disks.filter((p) => readFileSync(p).equals(want));
    const untouched = disks.filter((p) => readFileSync(p).equals(Buffer.alloc(4 << 20)));
    expect(written).toHaveLength(2);
    expect(untouched).toHaveLength(1);
    for (const a of agents) a.stop();
    await Promise.all(runs);
  });

  it('a machine put into a group joins the waiting session that names the group, only once the relabel is confirmed (saving groups overwrote a disk without asking)', async () => {
    const a = await fakeAgent(srv, srv.token, '02:00:00:00:0d:01');
    const s = await api('/api/sessions', { image: 'img', rule: { group: 'room-z' } });
    expect(s.status).toBe(201);
    await new Promise((r) => setTimeout(r, 200));
    expect(a.got.some((m) => m.type === 'assign')).toBe(false);
    // The group a waiting session names: refused with the session, the image and the disk named, and nothing changed.
    const refused = await api('/api/machines/02:00:00:00:0d:01', { name: 'pc-z', groups: ['room-z'] }, 'PATCH');
    expect(refused.status).toBe(409);
    expect(refused.body.error.code).toBe('CLONECAST_ERR_NEEDS_CONFIRM');
    expect(refused.body.error.message).toContain(`session ${s.body.id}`);
    expect(refused.body.error.message).toContain('img@');
    expect(srv.registry.get('02:00:00:00:0d:01')).toMatchObject({ name: '', groups: [], activity: { kind: 'idle' } });
    // A name alone, or a group no session names, needs no confirmation.
    expect((await api('/api/machines/02:00:00:00:0d:01', { name: 'pc-z', groups: ['room-y'] }, 'PATCH')).status).toBe(200);
    await new Promise((r) => setTimeout(r, 200));
    expect(a.got.some((m) => m.type === 'assign')).toBe(false);
    const labelled = await api('/api/machines/02:00:00:00:0d:01', { groups: ['room-z'], confirm: true }, 'PATCH');
    expect(labelled.body).toMatchObject({ groups: ['room-z'] });
    await until(() => a.got.some((m) => m.type === 'assign'), 5000, 'the assign once in the group');
    await api(`/api/sessions/${s.body.id}/cancel`, {});
    a.ws.close();
  });

  it('after a restart the sessions are the record of who holds which machine', async () => {
    const a = await fakeAgent(srv, srv.token, '02:00:00:00:0d:02');
    const s = await api('/api/sessions', { image: 'img', rule: { machines: ['02:00:00:00:0d:02'] } });
    await until(() => a.got.some((m) => m.type === 'assign'), 5000, 'the assign');
    a.ws.terminate();
    await srv.close();
    // machines.json lagging sessions.json at a crash: the session's machine shown idle, another held by a session that never was.
    const file = join(data, 'machines.json');
    const machines = JSON.parse(readFileSync(file, 'utf8')) as { id: string; activity: unknown }[];
    for (const m of machines) {
      if (m.id === '02:00:00:00:0d:02') m.activity = { kind: 'idle' };
      if (m.id === '02:00:00:00:0a:01') m.activity = { kind: 'session', id: 999 };
    }
    writeFileSync(file, JSON.stringify(machines));
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000, captureLostAfterS: 5 });
    expect(srv.registry.get('02:00:00:00:0d:02')?.activity).toEqual({ kind: 'session', id: s.body.id });
    expect(srv.registry.get('02:00:00:00:0a:01')?.activity).toEqual({ kind: 'idle' });
    await api(`/api/sessions/${s.body.id}/cancel`, {});
    expect(srv.registry.get('02:00:00:00:0d:02')?.activity).toEqual({ kind: 'idle' });
  });
});
