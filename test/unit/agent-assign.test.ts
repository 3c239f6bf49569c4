/**
 * The agent against a hand-driven server on loopback: assignments are
 * handled one at a time, so Assigns that arrive together never put two
 * receivers on one disk.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:https';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { After, CONTROL, decodeAgentMessage, encodeServerMessage, type Assign } from '../../protocol/control.js';
import { encodeManifest } from '../../protocol/manifest.js';
import { Store } from '../../server/store/store.js';
import { fingerprintOf, makeCert } from '../../server/tls.js';
import { importImage } from '../../server/store/import.js';
import { Agent } from '../../agent/agent.js';
import { tempDir } from '../helpers.js';

describe('agent assignments', () => {
  const dir = tempDir('assign');
  const closers: (() => void)[] = [];
  afterAll(() => closers.forEach((c) => c()));

  it('a second Assign during a supersede starts no second receiver', async () => {
    const image = join(dir, 'disk.img');
    writeFileSync(image, randomBytes(2 << 20));
    const store = Store.open(join(dir, 'data'));
    await importImage(store, image, 'img', { workers: 1 });
    const manifest = encodeManifest(await store.readManifest('img', 1));
    const disk = join(dir, 'pc.img');
    writeFileSync(disk, Buffer.alloc(2 << 20));

    // A server that welcomes the agent and serves the manifest; the test sends the Assigns.
    const cert = await makeCert(['127.0.0.1']);
    const http = createServer({ cert: cert.cert, key: cert.key }, (_, res) => res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(manifest));
    const wss = new WebSocketServer({ server: http, path: CONTROL.AGENT_PATH });
    let agentWs: WebSocket | undefined;
    wss.on('connection', (ws) => {
      ws.on('message', (d) => {
        const m = decodeAgentMessage(d as Buffer);
        if (m.type === 'hello') {
          agentWs = ws;
          ws.send(encodeServerMessage({ type: 'welcome', welcome: { protocol: CONTROL.VERSION, serverVersion: 'test', heartbeatMs: 60_000, progressMs: 1000 } }));
        }
      });
    });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', () => r()));
    closers.push(() => http.close());
    const port = (http.address() as { port: number }).port;

    const agent = new Agent({ server: `https://127.0.0.1:${port}/`, fingerprint: fingerprintOf(cert.cert), token: 'x'.repeat(48), disk, machineId: '02:00:00:00:0d:01', version: 'test' });
    const receivers: string[] = [];
    agent.on('receiver', (r: { sender: string }) => receivers.push(r.sender));
    const running = agent.run().catch(() => undefined);
    closers.push(() => agent.stop());
    const until = async (cond: () => boolean, what: string) => {
      const end = Date.now() + 10_000;
      while (!cond()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until(() => agentWs !== undefined, 'the hello');

    const assign = (senderPort: number): Assign => ({
      sessionId: 7,
      image: 'img',
      version: 1,
      imageSize: 2 << 20,
      device: disk,
      group: '239.77.200.1',
      port: 9777,
      senderAddress: '127.0.0.1',
      senderPort,
      sessionKey: 1234,
      fragmentSize: 1440,
      receiverId: 77,
      dataKey: Buffer.alloc(32, 1),
      receiverKey: Buffer.alloc(32, 2),
      after: After.AFTER_WAIT,
      manifestPath: '/manifest',
      manifestSha256: createHash('sha256').update(manifest).digest(),
      verify: true,
      resume: false,
    });
    const send = (a: Assign) => agentWs!.send(encodeServerMessage({ type: 'assign', assign: a }));
    send(assign(40001));
    await until(() => receivers.length === 1, 'the first receiver');
    // The server restarted: its sender moved. Two copies of the new Assign arrive together
    // (a reassignment on reconnect and one from the session's own offer).
    send(assign(40002));
    send(assign(40002));
    await until(() => receivers.length >= 2, 'the superseding receiver');
    await new Promise((r) => setTimeout(r, 500));
    expect(receivers).toEqual(['127.0.0.1:40001', '127.0.0.1:40002']);
    agent.stop();
    await running;
  });
});
