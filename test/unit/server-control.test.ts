/**
 * The server's control channel and API on loopback: the token, bad frames
 * closing only their own connection, the admin API's answers, and the
 * registry on disk.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, decodeServerMessage, encodeAgentMessage, type ServerMessage } from '../../protocol/control.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { cli, serverFetch, serverSocket, tempDir, type TlsServer } from '../helpers.js';

const MAC = '52:54:00:00:00:01';

function hello(token: string, machineId = MAC) {
  return encodeAgentMessage({
    type: 'hello',
    hello: { protocol: CONTROL.VERSION, token, machineId, macs: [machineId], hostname: 'pc-1', agentVersion: 'test', disks: [{ device: '/dev/vda', size: 1 << 30, logicalSector: 512, physicalSector: 512 }] },
  });
}

/** Opens an agent connection; collects decoded messages and the close code. */
function connect(srv: TlsServer) {
  const ws = serverSocket(srv, CONTROL.AGENT_PATH);
  const got: ServerMessage[] = [];
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  ws.on('message', (d) => got.push(decodeServerMessage(d as Buffer)));
  ws.on('error', () => {});
  const open = new Promise<void>((r) => ws.on('open', () => r()));
  return { ws, got, closed, open };
}

describe('server control channel and API on loopback', () => {
  const dir = tempDir('srv');
  const data = join(dir, 'data');
  let srv: RunningServer;
  const logs: string[] = [];

  beforeAll(async () => {
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test', maxMessage: 2048, heartbeatMs: 60_000, log: (l, m) => logs.push(`${l} ${m}`) });
  });
  afterAll(async () => srv?.close());

  it('creates the token on first start, mode 0600, and "clonecast token" prints the same one', async () => {
    expect(srv.tokenCreated).toBe(true);
    expect(statSync(join(data, 'token')).mode & 0o777).toBe(0o600);
    const r = await cli(['token', '--data', data]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(srv.token);
  });

  it('closes each bad connection with its reason and keeps serving a good agent', async () => {
    const good = connect(srv);
    await good.open;
    good.ws.send(hello(srv.token));
    await new Promise((r) => setTimeout(r, 200));
    expect(good.got[0]?.type).toBe('welcome');

    const cases: [string, (ws: WebSocket) => void, number][] = [
      ['a frame over the limit', (ws) => ws.send(Buffer.alloc(4096, 1)), 1009],
      ['a text frame', (ws) => ws.send('hello'), 1003],
      ['garbage', (ws) => ws.send(Buffer.from('ffffffffffffffffff', 'hex')), 1007],
      ['an unknown message type', (ws) => ws.send(Buffer.from([0x7a, 0x01, 0x00])), 1007],
      ['progress before hello', (ws) => ws.send(encodeAgentMessage({ type: 'progress', progress: { sessionId: 1, state: 4 } })), 4400],
      ['a wrong token', (ws) => ws.send(hello('0'.repeat(48), '52:54:00:00:00:02')), 4401],
    ];
    for (const [what, act, code] of cases) {
      const c = connect(srv);
      await c.open;
      act(c.ws);
      expect(await c.closed, what).toBe(code);
      if (code === 4401) expect(c.got.find((m) => m.type === 'refuse')).toMatchObject({ refuse: { retry: false } });
    }
    // The good agent is still served.
    good.ws.send(encodeAgentMessage({ type: 'heartbeat', heartbeat: { sentMs: 42 } }));
    await new Promise((r) => setTimeout(r, 200));
    expect(good.got.at(-1)).toMatchObject({ type: 'heartbeat', heartbeat: { echoMs: 42 } });
    expect(good.ws.readyState).toBe(WebSocket.OPEN);
    expect(srv.agents.rejected).toMatchObject({ tooLarge: 1, text: 1, malformed: 2, protocol: 1, unauthorized: 1 });
    expect(logs.some((l) => /closing the connection: text frame/.test(l))).toBe(true);
    expect(srv.registry.list().map((m) => m.id)).toEqual([MAC]);
    good.ws.close();
  });

  it('answers the admin API only with the token, with JSON errors that say what to do', async () => {
    const call = (path: string, init: { method?: string; body?: string } = {}, token: string | undefined = srv.token) =>
      serverFetch(srv, path, { ...init, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' } });
    const denied = await call('/api/state', {}, '');
    expect(denied.status).toBe(401);
    expect((await denied.json()).error.message).toMatch(/needs the server's token/);
    expect((await call('/metrics', {}, 'nope')).status).toBe(401);
    const state = await (await call('/api/state')).json();
    expect(state.machines.map((m: { id: string }) => m.id)).toEqual([MAC]);
    const badJson = await call('/api/sessions', { method: 'POST', body: '{not json' });
    expect(badJson.status).toBe(400);
    const noImage = await call('/api/sessions', { method: 'POST', body: JSON.stringify({ image: 'nothing' }) });
    expect(noImage.status).toBe(404);
    const badRule = await call('/api/sessions', { method: 'POST', body: JSON.stringify({ image: 'x', rule: { machines: ['pc-1'] } }) });
    expect([400, 404]).toContain(badRule.status);
    const metrics = await (await call('/metrics')).text();
    expect(metrics).toMatch(/^clonecast_control_rejected_total\{reason="tooLarge"\} 1$/m);
    expect(metrics).toMatch(/^clonecast_machines\{state="offline"\} 1$/m);
    expect((await call('/')).headers.get('content-type')).toMatch(/text\/html/);
  });

  it('saves the registry atomically and sets an unreadable one aside instead of losing it', async () => {
    await srv.close();
    const saved = JSON.parse(readFileSync(join(data, 'machines.json'), 'utf8'));
    expect(saved[0]).toMatchObject({ id: MAC, hostname: 'pc-1' });
    writeFileSync(join(data, 'machines.json'), '{broken');
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test', log: (l, m) => logs.push(`${l} ${m}`) });
    expect(srv.tokenCreated).toBe(false);
    expect(srv.registry.list()).toEqual([]);
    const aside = readdirSync(data).filter((f) => f.startsWith('machines.json.unreadable-'));
    expect(aside).toHaveLength(1);
    expect(readFileSync(join(data, aside[0]), 'utf8')).toBe('{broken');
    expect(existsSync(join(data, 'machines.json'))).toBe(false);
  });
});
