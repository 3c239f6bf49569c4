/**
 * A WebSocket flood against the control channel, on loopback: an attacker
 * (127.0.0.2) opens many connections and never says hello. Each costs a
 * socket for at most 2 s, at most 8 are held for one address, and a real
 * agent from another address (127.0.0.1) is served throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, decodeServerMessage, encodeAgentMessage, type ServerMessage } from '../../protocol/control.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { serverSocket, tempDir } from '../helpers.js';

describe('control channel under a WebSocket flood', () => {
  const dir = tempDir('flood');
  let srv: RunningServer;
  beforeAll(async () => {
    srv = await startServer({ store: Store.open(join(dir, 'data')), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
  });
  afterAll(async () => srv?.close());

  it('holds at most 8 silent connections per address, each for at most 2 s, and serves a real agent meanwhile', async () => {
    const flood = Array.from({ length: 60 }, () => {
      const ws = serverSocket(srv, CONTROL.AGENT_PATH, { localAddress: '127.0.0.2' });
      const opened = new Promise<boolean>((r) => {
        ws.on('open', () => r(true));
        ws.on('error', () => r(false));
      });
      const closedAt = new Promise<void>((r) => ws.on('close', () => r()));
      return { ws, opened, closedAt };
    });
    const opened = (await Promise.all(flood.map((f) => f.opened))).filter(Boolean).length;
    expect(opened).toBeGreaterThan(0);
    expect(opened).toBeLessThanOrEqual(8);
    expect(srv.agents.rejected.overLimit).toBeGreaterThanOrEqual(60 - 8);

    // A real agent, from another address, during the flood.
    const agent = serverSocket(srv, CONTROL.AGENT_PATH, { localAddress: '127.0.0.1' });
    const got: ServerMessage[] = [];
    agent.on('message', (d) => got.push(decodeServerMessage(d as Buffer)));
    await new Promise<void>((r) => agent.on('open', () => r()));
    const mac = '02:00:00:00:0f:01';
    agent.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token: srv.token, machineId: mac, macs: [mac], hostname: 'real', agentVersion: 't', disks: [] } }));
    const end = Date.now() + 5000;
    while (!got.some((m) => m.type === 'welcome') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(got[0]?.type).toBe('welcome');

    // Every silent connection is closed by the server's Hello deadline, not by the client.
    await Promise.all(flood.map((f) => f.closedAt));
    expect(srv.agents.rejected.protocol).toBe(opened);
    // The real agent is still connected.
    expect(agent.readyState).toBe(WebSocket.OPEN);
    expect(srv.agents.connected).toBe(1);
    agent.close();
  });

  it('a flood of Hellos with a wrong token: every one refused and closed, none registered', async () => {
    const before = srv.agents.rejected.unauthorized;
    const flood = Array.from({ length: 40 }, (_, i) => {
      const ws = serverSocket(srv, CONTROL.AGENT_PATH, { localAddress: '127.0.0.3' });
      const mac = `02:00:00:00:1f:${(i + 16).toString(16)}`;
      ws.on('open', () => ws.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token: 'f'.repeat(48), machineId: mac, macs: [mac], hostname: 'x', agentVersion: 't', disks: [] } })));
      const opened = new Promise<boolean>((r) => {
        ws.on('open', () => r(true));
        ws.on('error', () => r(false));
      });
      return { opened, closed: new Promise<void>((r) => ws.on('close', () => r())) };
    });
    // Each counts against the 8 unproven connections of its address until it is closed.
    const opened = (await Promise.all(flood.map((f) => f.opened))).filter(Boolean).length;
    expect(opened).toBeGreaterThan(0);
    await Promise.all(flood.map((f) => f.closed));
    expect(srv.agents.rejected.unauthorized - before).toBe(opened);
    expect(srv.agents.connected).toBe(0);
  });
});
