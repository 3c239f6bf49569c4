/**
 * Boot credentials, agent secrets, capture secrets and confirmed results,
 * against a real server with network boot on loopback: each attack of
 * issue 12 that these close is performed here and refused. Named after
 * what broke.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHmac, createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, decodeServerMessage, encodeAgentMessage, MachineState, type Assign, type ServerMessage } from '../../protocol/control.js';
import { diskDigest } from '../../protocol/manifest.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { BootCredentials } from '../../server/credentials.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Agent } from '../../agent/agent.js';
import { itNeeds, serverFetch, serverSocket, tempDir, type TlsServer } from '../helpers.js';

type Conn = { ws: WebSocket; got: ServerMessage[]; closed: Promise<number> };

/** A hand-driven agent: says hello with one disk and records what the server sends; resolves on Welcome or Refuse. */
async function hello(srv: TlsServer, token: string, mac: string): Promise<Conn> {
  const ws = serverSocket(srv, CONTROL.AGENT_PATH);
  const got: ServerMessage[] = [];
  ws.on('message', (d) => got.push(decodeServerMessage(d as Buffer)));
  ws.on('error', () => {});
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  await new Promise<void>((r) => ws.on('open', () => r()));
  ws.send(
    encodeAgentMessage({
      type: 'hello',
      hello: { protocol: CONTROL.VERSION, token, machineId: mac, macs: [mac], hostname: `pc-${mac.slice(-2)}`, agentVersion: 'test', disks: [{ device: '/dev/vda', size: 1 << 30, logicalSector: 512, physicalSector: 512 }] },
    }),
  );
  await until(() => got.some((m) => m.type === 'welcome' || m.type === 'refuse'), 10_000, `an answer to ${mac}'s hello`);
  return { ws, got, closed };
}

const welcomed = (c: Conn) => c.got.find((m) => m.type === 'welcome') as Extract<ServerMessage, { type: 'welcome' }> | undefined;
const refusal = (c: Conn) => (c.got.find((m) => m.type === 'refuse') as Extract<ServerMessage, { type: 'refuse' }> | undefined)?.refuse.reason;
const assigns = (c: Conn) => c.got.filter((m): m is Extract<ServerMessage, { type: 'assign' }> => m.type === 'assign').map((m) => m.assign);

async function until(cond: () => boolean, ms = 15_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('credentials on a shared LAN', () => {
  const dir = tempDir('creds');
  const data = join(dir, 'data');
  const image = join(dir, 'disk.img');
  const logs: string[] = [];
  let srv: RunningServer;
  let store: Store;

  const request = async (path: string, token: string, o: { method?: string; body?: string | Buffer; machine?: string } = {}) => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    if (o.machine !== undefined) headers['x-clonecast-machine'] = o.machine;
    const res = await serverFetch(srv, path, { method: o.method ?? (o.body === undefined ? 'GET' : 'POST'), headers, body: o.body });
    return { status: res.status, text: await res.text() };
  };
  const api = async (path: string, body?: unknown, method?: string) => {
    const r = await request(path, srv.token, { body: body === undefined ? undefined : JSON.stringify(body), method });
    return { status: r.status, body: JSON.parse(r.text) as Record<string, any> };
  };
  const script = async (mac: string) => (await request(`/boot/ipxe?mac=${mac}`, '')).text;
  const serverOptions = () => ({
    store,
    listen: '127.0.0.1:0',
    interface: 'lo',
    version: 'test',
    heartbeatMs: 60_000,
    pxe: { mode: 'proxy' as const, dhcpPort: 0, pxePort: 0, tftpPort: 0, idle: 'agent' as const },
    log: (_level: string, message: string) => logs.push(message),
  });
  const credentialIn = (text: string) => /clonecast\.token=([0-9a-f]+)/.exec(text)?.[1];

  beforeAll(async () => {
    // 4 MiB: a data chunk, a zero chunk, a data chunk, a zero chunk.
    const bytes = Buffer.alloc(4 << 20);
    randomBytes(1 << 20).copy(bytes, 0);
    randomBytes(1 << 20).copy(bytes, 2 << 20);
    writeFileSync(image, bytes);
    store = Store.open(data);
    await importImage(store, image, 'img', { workers: 1 });
    // The administrator names one machine in pxe/machines.json.
    mkdirSync(join(data, 'pxe'), { recursive: true });
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ '02:00:00:00:0e:01': { action: 'agent' } }));
    if (process.getuid?.() !== 0) return;
    srv = await startServer(serverOptions());
  });
  afterAll(async () => srv?.close());

  itNeeds(['root'], 'boot script for an unnamed MAC carries no credential, with --pxe-idle agent and during an --any session', async () => {
    const idle = await script('02:00:00:00:0a:01');
    expect(idle).toMatch(/kernel .*clonecast\.server=/);
    expect(idle).not.toMatch(/token/);
    const any = await api('/api/sessions', { image: 'img', rule: { any: true } });
    expect(any.status).toBe(201);
    expect(srv.sessions.wants('02:00:00:00:0a:02')).toBe(true);
    const during = await script('02:00:00:00:0a:02');
    expect(during).toMatch(/kernel /);
    expect(during).not.toMatch(/token/);
    await api(`/api/sessions/${any.body.id}/cancel`, {});
  });

  itNeeds(['root'], 'a boot credential for machine A cannot Hello as B, and is good for one first Hello only', async () => {
    const A = '02:00:00:00:0b:01';
    const s = await api('/api/sessions', { image: 'img', rule: { machines: [A] } });
    const credential = credentialIn(await script(A))!;
    expect(credential).toMatch(/^[0-9a-f]{64}$/);
    // Never in the server's log.
    expect(logs.join('\n')).not.toContain(credential);
    const asB = await hello(srv, credential, '02:00:00:00:0b:02');
    expect(refusal(asB)).toMatch(/issued for another machine/);
    expect(srv.registry.get('02:00:00:00:0b:02')).toBeUndefined();
    const a = await hello(srv, credential, A);
    const secret = welcomed(a)!.welcome.agentSecret!;
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    expect(secret).not.toBe(credential);
    await until(() => assigns(a).length > 0, 10_000, 'the assign');
    expect(assigns(a)[0].nonce).toHaveLength(16);
    a.ws.close();
    await a.closed;
    const again = await hello(srv, credential, A);
    expect(refusal(again)).toMatch(/unknown or was used already/);
    // The machine's own secret is what reconnects it.
    const back = await hello(srv, secret, A);
    expect(welcomed(back)).toBeDefined();
    expect(srv.registry.get(A)?.trust).toBe('credential');
    back.ws.close();
    await api(`/api/sessions/${s.body.id}/cancel`, {});
  });

  it('a boot credential expires', () => {
    let now = 1_000_000;
    const creds = new BootCredentials({ ttlMs: 60_000, now: () => now });
    const c = creds.issue('02:00:00:00:0b:03', { kind: 'machine' });
    expect(creds.check(c, '02:00:00:00:0b:03')).toEqual({ binding: { kind: 'machine' } });
    now += 60_001;
    expect(creds.check(c, '02:00:00:00:0b:03')).toEqual({ refused: expect.stringMatching(/unknown|expired/) });
    expect(creds.size).toBe(0);
  });

  itNeeds(['root'], "a machine's secret reads only the manifest of its own session, and no admin route", async () => {
    const A = '02:00:00:00:0c:01';
    const X = '02:00:00:00:0c:02';
    const mine = await api('/api/sessions', { image: 'img', rule: { machines: [A] } });
    const other = await api('/api/sessions', { image: 'img', rule: { machines: [X] } });
    const a = await hello(srv, credentialIn(await script(A))!, A);
    const secret = welcomed(a)!.welcome.agentSecret!;
    await until(() => assigns(a).length > 0, 10_000, 'the assign');
    expect((await request(`/api/sessions/${mine.body.id}/manifest`, secret, { machine: A })).status).toBe(200);
    expect((await request(`/api/sessions/${other.body.id}/manifest`, secret, { machine: A })).status).toBe(401);
    expect((await request(`/api/sessions/${other.body.id}/manifest`, secret, { machine: X })).status).toBe(401);
    // A fresh boot credential (anyone can fetch A's script) opens nothing over HTTP either.
    const fresh = credentialIn(await script(A))!;
    expect((await request(`/api/sessions/${mine.body.id}/manifest`, fresh, { machine: A })).status).toBe(401);
    for (const t of [secret, fresh]) {
      expect((await request('/api/machines', t, { machine: A })).status).toBe(401);
      expect((await request('/api/sessions', t, { machine: A, body: JSON.stringify({ image: 'img', rule: { any: true } }) })).status).toBe(401);
    }
    a.ws.close();
    await api(`/api/sessions/${mine.body.id}/cancel`, {});
    await api(`/api/sessions/${other.body.id}/cancel`, {});
  });

  itNeeds(['root'], "neither a boot credential nor a machine's secret reaches a capture's routes; only the capture's own secret does, while it runs", async () => {
    const C = '02:00:00:00:0e:01'; // named by the administrator in pxe/machines.json
    const c = await hello(srv, credentialIn(await script(C))!, C);
    const secret = welcomed(c)!.welcome.agentSecret!;
    const cap = await api('/api/captures', { machine: C, image: 'golden' });
    expect(cap.status).toBe(201);
    await until(() => c.got.some((m) => m.type === 'capture'), 10_000, 'the capture command');
    const captureSecret = (c.got.find((m) => m.type === 'capture') as Extract<ServerMessage, { type: 'capture' }>).capture.secret!;
    expect(captureSecret).toMatch(/^[0-9a-f]{64}$/);
    const fresh = credentialIn(await script(C))!;
    const chunk = randomBytes(64);
    const sha = createHash('sha256').update(chunk).digest('hex');
    const id = cap.body.id as number;
    const progress = JSON.stringify({ chunksDone: 1, chunksTotal: 4, bytesRead: 1, reused: 0, bytesSent: 0 });
    for (const t of [secret, fresh]) {
      expect((await request(`/api/captures/${id}/progress`, t, { machine: C, body: progress })).status).toBe(401);
      expect((await request(`/api/captures/${id}/have`, t, { machine: C, body: JSON.stringify({ chunks: [sha] }) })).status).toBe(401);
      expect((await request(`/api/captures/${id}/chunks/${sha}`, t, { machine: C, method: 'PUT', body: chunk })).status).toBe(401);
      expect((await request(`/api/captures/${id}/table`, t, { machine: C, method: 'PUT', body: Buffer.alloc(64) })).status).toBe(401);
      expect((await request(`/api/captures/${id}/finish`, t, { machine: C, body: '{}' })).status).toBe(401);
    }
    expect(srv.captures.get(id).received.chunks).toBe(0);
    expect((await request(`/api/captures/${id}/progress`, captureSecret, { machine: C, body: progress })).status).toBe(200);
    // Still its credential after a server restart (kept hashed in captures.json), and the machine's secret too.
    c.ws.close();
    await srv.close();
    srv = await startServer(serverOptions());
    expect((await request(`/api/captures/${id}/progress`, captureSecret, { machine: C, body: progress })).status).toBe(200);
    const back = await hello(srv, secret, C);
    expect(welcomed(back)).toBeDefined();
    await api(`/api/captures/${id}/fail`, { reason: 'test over' });
    expect((await request(`/api/captures/${id}/progress`, captureSecret, { machine: C, body: progress })).status).toBe(401);
    back.ws.close();
  });

  itNeeds(['root'], "an impersonating Hello (same MAC, no credential or another one) cannot replace the real agent's connection", async () => {
    const A = '02:00:00:00:0d:01';
    const s = await api('/api/sessions', { image: 'img', rule: { machines: [A] } });
    const real = await hello(srv, credentialIn(await script(A))!, A);
    expect(welcomed(real)).toBeDefined();
    const none = await hello(srv, '', A);
    expect(refusal(none)).toMatch(/proved who it is before/);
    const wrong = await hello(srv, randomBytes(32).toString('hex'), A);
    expect(refusal(wrong)).toMatch(/unknown/);
    // A fresh credential for A, as anyone on the LAN can fetch from A's boot script.
    const fresh = await hello(srv, credentialIn(await script(A))!, A);
    expect(refusal(fresh)).toMatch(/connected already/);
    await Promise.all([none.closed, wrong.closed, fresh.closed]);
    expect(real.ws.readyState).toBe(WebSocket.OPEN);
    expect(srv.registry.get(A)?.online).toBe(true);
    expect(srv.agents.connected).toBeGreaterThan(0);
    real.ws.close();
    await api(`/api/sessions/${s.body.id}/cancel`, {});
  });

  itNeeds(['root'], 'an agent without a credential is unverified: a session naming its MAC does not take it, an --any session does, a capture refuses it', async () => {
    const U = '02:00:00:00:0f:01';
    const named = await api('/api/sessions', { image: 'img', rule: { machines: [U] } });
    const u = await hello(srv, '', U);
    expect(welcomed(u)).toBeDefined();
    expect(srv.registry.get(U)?.trust).toBe('unverified');
    expect((await api('/api/captures', { machine: U, image: 'from-u' })).status).not.toBe(201);
    const any = await api('/api/sessions', { image: 'img', rule: { any: true } });
    await until(() => assigns(u).length > 0, 10_000, 'an assign');
    expect(assigns(u).map((a) => a.sessionId)).toEqual([any.body.id]);
    u.ws.close();
    await api(`/api/sessions/${any.body.id}/cancel`, {});
    await api(`/api/sessions/${named.body.id}/cancel`, {});
  });

  itNeeds(['root'], 'a secret an impostor got while the machine was unverified opens nothing once the machine proved itself with the server token', async () => {
    const X = '02:00:00:00:0f:02';
    // The attacker says hello as X first, with no credential: unverified, and it is given a secret.
    const impostor = await hello(srv, '', X);
    const stolen = welcomed(impostor)!.welcome.agentSecret!;
    expect(stolen).toMatch(/^[0-9a-f]{64}$/);
    impostor.ws.close();
    await until(() => srv.registry.get(X)?.online === false, 10_000, 'X offline');
    // X's real agent connects with the server's token.
    const real = await hello(srv, srv.token, X);
    expect(welcomed(real)).toBeDefined();
    expect(srv.registry.get(X)?.trusted).toBe(true);
    // The old secret neither replaces the real connection nor gets in after it.
    const again = await hello(srv, stolen, X);
    expect(welcomed(again)).toBeUndefined();
    expect(refusal(again)).toBeDefined();
    expect(real.ws.readyState).toBe(WebSocket.OPEN);
    real.ws.close();
    await until(() => srv.registry.get(X)?.online === false, 10_000, 'X offline');
    const later = await hello(srv, stolen, X);
    expect(welcomed(later)).toBeUndefined();
  });

  itNeeds(['root'], 'a Result with the digest computed from the manifest (the old formula) is refused; the digest keyed by the nonce over the bytes is confirmed', async () => {
    const [R1, R2] = ['02:00:00:00:10:01', '02:00:00:00:10:02'];
    const s = await api('/api/sessions', { image: 'img', rule: { machines: [R1, R2] } });
    const r1 = await hello(srv, srv.token, R1);
    const r2 = await hello(srv, srv.token, R2);
    await until(() => assigns(r1).length > 0 && assigns(r2).length > 0, 10_000, 'both assigns');
    const a: Assign = assigns(r1)[0];
    const manifest = await store.readManifest('img', 1);
    const result = (digest: Buffer) => ({ sessionId: a.sessionId, state: MachineState.STATE_DONE, verified: true, chunksVerified: 4, diskDigest: digest, seconds: 1, bytesWritten: 4 << 20, device: '/dev/vda' });
    const confirm = (c: Conn) => (c.got.find((m) => m.type === 'confirm') as Extract<ServerMessage, { type: 'confirm' }> | undefined)?.confirm;
    r1.ws.send(encodeAgentMessage({ type: 'result', result: result(diskDigest(manifest)) }));
    await until(() => confirm(r1) !== undefined, 30_000, 'the confirm to R1');
    expect(confirm(r1)).toMatchObject({ sessionId: a.sessionId, accepted: false, reason: expect.stringMatching(/does not match/) });
    expect(srv.sessions.get(s.body.id)!.machines[R1].state).toBe('failed');
    // The right one: SHA-256 over HMAC-SHA256(nonce, chunk) of every chunk of the disk, read from the image itself.
    const nonce = Buffer.from(assigns(r2)[0].nonce!);
    expect(nonce.equals(Buffer.from(a.nonce!))).toBe(true); // one nonce per session
    const bytes = readFileSync(image);
    const all = createHash('sha256');
    for (let off = 0; off < bytes.length; off += 1 << 20) all.update(createHmac('sha256', nonce).update(bytes.subarray(off, off + (1 << 20))).digest());
    r2.ws.send(encodeAgentMessage({ type: 'result', result: result(all.digest()) }));
    await until(() => confirm(r2) !== undefined, 30_000, 'the confirm to R2');
    expect(confirm(r2)).toMatchObject({ sessionId: a.sessionId, accepted: true });
    expect(srv.sessions.get(s.body.id)!.machines[R2].state).toBe('done');
    r1.ws.close();
    r2.ws.close();
  });

  itNeeds(['root'], 'the agent reboots only after an accepted Confirm: a result the server does not accept leaves it where it is, saying why', async () => {
    const macs = ['02:00:00:00:11:01', '02:00:00:00:11:02'];
    const disks = macs.map((_, i) => {
      const p = join(dir, `pc${i}.img`);
      writeFileSync(p, Buffer.alloc(4 << 20));
      return p;
    });
    const lines: string[][] = [[], []];
    // The second agent does not read its disk back: the server cannot accept its "done".
    const agents = macs.map((machineId, i) => new Agent({ server: srv.url, fingerprint: srv.fingerprint, token: srv.token, disk: disks[i], machineId, version: 'test', verify: i === 0 ? undefined : false, log: (_l, m) => lines[i].push(m) }));
    const events: string[][] = [[], []];
    agents.forEach((a, i) => {
      a.on('confirmed', () => events[i].push('confirmed'));
      a.on('refused', () => events[i].push('refused'));
    });
    const runs = agents.map((a) => a.run().catch(() => undefined));
    await until(() => macs.every((m) => srv.registry.get(m)?.online === true), 10_000, 'both agents');
    const s = await api('/api/sessions', { image: 'img', rule: { machines: macs }, after: 'reboot', rateMbit: 200 });
    await until(() => events.every((e) => e.length > 0), 60_000, 'both answers');
    expect(events).toEqual([['confirmed'], ['refused']]);
    expect(lines[0].join('\n')).toMatch(/the session asks for reboot; not doing it without --allow-power/);
    expect(lines[1].join('\n')).not.toMatch(/asks for reboot/);
    expect(lines[1].join('\n')).toMatch(/did not accept this machine's result: .*did not verify the disk; staying here/);
    expect(srv.sessions.get(s.body.id)!.machines[macs[1]].state).toBe('failed');
    for (const a of agents) a.stop();
    await Promise.all(runs);
  }, 90_000);
});
