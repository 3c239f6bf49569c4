/**
 * TLS on loopback: the certificate made on first start and kept across
 * restarts (its printed fingerprint is what a TLS client sees), renewal, a
 * rogue TLS server with another certificate that every client refuses before
 * sending a byte (no token, no Hello), and the plain-HTTP boot listener that
 * serves network boot and nothing else.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer as createTlsServer, connect, type Server as TlsServerType } from 'node:tls';
import { request as plainRequest } from 'node:http';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { fingerprintOf, makeCert } from '../../server/tls.js';
import { Agent } from '../../agent/agent.js';
import { call, reportFailure } from '../../agent/capture.js';
import { isError, ERR } from '../../protocol/errors.js';
import { normalizeFingerprint, pinnedFetch } from '../../native/pinned-tls.js';
import { cli, itNeeds, serverFetch, tempDir } from '../helpers.js';

/** What a TLS client sees as the certificate of host:port. */
function seenFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.on('error', reject);
  });
}

/** A plain HTTP request; resolves with the status and body, or the error's message. */
function plain(url: string, method = 'GET', headers: Record<string, string> = {}): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = plainRequest(url, { method, headers }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', (err) => resolve({ error: err.message }));
    req.setTimeout(5000, () => req.destroy(new Error('no answer')));
    req.end();
  });
}

/**
 * A rogue TLS server with its own certificate: records every byte it
 * receives after the handshake, and answers 401 to any request it can read.
 */
async function rogueServer() {
  const made = await makeCert(['127.0.0.1', 'localhost']);
  const received: Buffer[] = [];
  let connections = 0;
  const server: TlsServerType = createTlsServer({ cert: made.cert, key: made.key }, (socket) => {
    socket.on('data', (d: Buffer) => {
      received.push(d);
      if (Buffer.concat(received).includes('\r\n\r\n')) socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}');
    });
    socket.on('error', () => {});
  });
  server.on('tlsClientError', () => {});
  // Connections reached (TCP): the client came here, whatever it did after the handshake.
  server.on('connection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `https://127.0.0.1:${port}/`,
    fingerprint: fingerprintOf(made.cert),
    received: () => Buffer.concat(received).toString('latin1'),
    connections: () => connections,
    reset: () => ((received.length = 0), (connections = 0)),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

describe('the server certificate', () => {
  const dir = tempDir('tls');
  const data = join(dir, 'data');

  it('is made on first start (key mode 0600), kept across restarts, and is what a TLS client sees', async () => {
    let srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test' });
    const first = srv.fingerprint;
    try {
      expect(first).toMatch(/^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/);
      expect(srv.certCreated).toBe(true);
      expect(statSync(join(srv.certDir, 'key.pem')).mode & 0o777).toBe(0o600);
      expect(fingerprintOf(readFileSync(join(srv.certDir, 'cert.pem'), 'utf8'))).toBe(first);
      expect(await seenFingerprint(Number(new URL(srv.url).port))).toBe(first);
      expect(srv.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/$/);
    } finally {
      await srv.close();
    }
    srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test' });
    try {
      expect(srv.certCreated).toBe(false);
      expect(srv.fingerprint).toBe(first);
      expect(await seenFingerprint(Number(new URL(srv.url).port))).toBe(first);
      const printed = await cli(['fingerprint', '--data', data]);
      expect(printed.stdout.trim()).toBe(first);
    } finally {
      await srv.close();
    }
  });

  it('is renewed on request: the new one is served after a restart and a client pinning the old one is refused with what to do', async () => {
    const old = (await cli(['fingerprint', '--data', data])).stdout.trim();
    const renewed = await cli(['tls', 'renew', '--data', data]);
    expect(renewed.code, renewed.stderr).toBe(0);
    const now = renewed.stdout.split('\n')[0];
    expect(now).not.toBe(old);
    const srv = await startServer({ store: Store.open(data), listen: '127.0.0.1:0', version: 'test' });
    try {
      expect(srv.fingerprint).toBe(now);
      expect(await seenFingerprint(Number(new URL(srv.url).port))).toBe(now);
      const refused = await pinnedFetch(new URL('/api/state', srv.url), { pin: old, headers: { authorization: `Bearer ${srv.token}` } }).catch((e: Error) => e);
      expect(isError(refused, ERR.CERT_MISMATCH)).toBe(true);
      expect((refused as Error).message).toMatch(/not the expected .*nothing was sent to it.*--fingerprint or CLONECAST_FINGERPRINT/);
      expect((await serverFetch(srv, '/api/state', { headers: { authorization: `Bearer ${srv.token}` } })).status).toBe(200);
    } finally {
      await srv.close();
    }
  });

  it('takes fingerprints with or without colons, in any case, and refuses anything else', () => {
    const f = 'AB:'.repeat(31) + 'CD';
    expect(normalizeFingerprint(f.toLowerCase().replace(/:/g, ''))).toBe(f);
    expect(normalizeFingerprint(`sha256:${f}`)).toBe(f);
    expect(() => normalizeFingerprint('AB:CD')).toThrow(/not a SHA-256 fingerprint/);
  });
});

describe('a rogue TLS server with another certificate', () => {
  const dir = tempDir('rogue');
  const TOKEN = 'f00d'.repeat(12);
  let rogue: Awaited<ReturnType<typeof rogueServer>>;
  let real: string;

  beforeAll(async () => {
    rogue = await rogueServer();
    real = fingerprintOf((await makeCert(['127.0.0.1'])).cert);
  });
  afterAll(async () => rogue?.close());

  it('gets no byte from the admin commands: no Authorization header, no request line', async () => {
    for (const args of [['machines'], ['sessions'], ['deploy', 'img', '--any', '--clients', '1'], ['captures', 'fail', '3']]) {
      rogue.reset();
      const r = await cli([...args, '--server', rogue.url, '--fingerprint', real, '--data', join(dir, 'none')], { CLONECAST_TOKEN: TOKEN });
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(/showed a certificate with fingerprint .* not the expected .*nothing was sent to it/);
      expect(rogue.connections(), args.join(' ')).toBeGreaterThan(0);
      expect(rogue.received(), args.join(' ')).toBe('');
    }
  });

  it('gets no Hello (no token) from an agent, and no capture call', async () => {
    rogue.reset();
    const logs: string[] = [];
    writeFileSync(join(dir, 'disk.img'), Buffer.alloc(1 << 20));
    const agent = new Agent({ server: rogue.url, fingerprint: real, token: TOKEN, disk: join(dir, 'disk.img'), machineId: '02:00:00:00:0e:01', version: 'test', log: (_l, m) => logs.push(m) });
    const running = agent.run().catch(() => undefined);
    for (let i = 0; i < 300 && !logs.some((l) => /not the expected/.test(l)); i++) await new Promise((r) => setTimeout(r, 50));
    agent.stop();
    await running;
    expect(logs.find((l) => /control channel/.test(l))).toMatch(/showed a certificate with fingerprint .* not the expected/);
    const link = { server: rogue.url, fingerprint: real, token: TOKEN, machineId: '02:00:00:00:0e:01' };
    await reportFailure(link, 1, 'x');
    const failed = await call(link, 'POST', '/api/captures/1/progress', '{}').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isError(failed, ERR.CERT_MISMATCH)).toBe(true);
    expect(rogue.connections()).toBeGreaterThan(1);
    expect(rogue.received()).toBe('');
  });

  it('would have the token if the client trusted its certificate (the recorder works)', async () => {
    rogue.reset();
    const r = await cli(['machines', '--server', rogue.url, '--fingerprint', rogue.fingerprint, '--data', join(dir, 'none')], { CLONECAST_TOKEN: TOKEN });
    expect(r.code).not.toBe(0);
    expect(rogue.received()).toMatch(new RegExp(`authorization: Bearer ${TOKEN}`, 'i'));
  });

  it('a plain http:// server URL is refused before any connection', async () => {
    const r = await cli(['machines', '--server', rogue.url.replace('https', 'http'), '--fingerprint', real, '--data', join(dir, 'none')], { CLONECAST_TOKEN: TOKEN });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/plain HTTP; the server speaks only HTTPS there: use https:\/\//);
  });
});

describe('the plain-HTTP boot listener', () => {
  const dir = tempDir('bootl');

  itNeeds(['root'], 'serves boot scripts and files, and nothing of the API, the dashboard or the agent channel; the TLS port answers no plain HTTP', async () => {
    // Stand-ins for Debian's iPXE binaries: TFTP is not what this test looks at.
    const ipxeDir = join(dir, 'ipxe');
    mkdirSync(ipxeDir);
    for (const f of ['undionly.kpxe', 'ipxe.efi', 'snponly.efi']) writeFileSync(join(ipxeDir, f), f);
    const bootDir = join(dir, 'boot');
    mkdirSync(bootDir);
    writeFileSync(join(bootDir, 'vmlinuz'), 'kernel bytes');
    const srv = await startServer({
      store: Store.open(join(dir, 'data')),
      listen: '127.0.0.1:0',
      interface: 'lo',
      version: 'test',
      pxe: { mode: 'proxy', ipxeDir, bootDir, idle: 'agent', dhcpPort: 0, pxePort: 0, tftpPort: 0 },
    });
    try {
      const boot = srv.bootUrl!;
      expect(boot).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const script = await plain(`${boot}boot/ipxe?mac=52:54:00:00:0e:01`);
      expect(script).toMatchObject({ status: 200 });
      const text = (script as { body: string }).body;
      expect(text).toContain(`kernel ${boot}boot/files/vmlinuz`);
      expect(text).toContain(`clonecast.server=${srv.url} clonecast.fingerprint=${srv.fingerprint} `);
      expect(await plain(`${boot}boot/files/vmlinuz`)).toEqual({ status: 200, body: 'kernel bytes' });
      // Nothing else, with the token or without.
      const auth = { authorization: `Bearer ${srv.token}` };
      for (const [method, path] of [['GET', 'api/state'], ['GET', 'api/machines'], ['POST', 'api/sessions'], ['GET', 'metrics'], ['GET', ''], ['GET', 'dashboard.js'], ['GET', 'healthz'], ['GET', 'api/events'], ['GET', 'agent']]) {
        const r = await plain(`${boot}${path}`, method, auth);
        expect(r, `${method} /${path}`).toMatchObject({ status: 404 });
        expect((r as { body: string }).body).toMatch(/serves only network boot/);
      }
      const upgrade = await plain(`${boot}agent`, 'GET', { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' });
      expect(upgrade).toMatchObject({ status: 404 });
      expect(srv.sessions.list()).toEqual([]);
      // The TLS port does not answer plain HTTP.
      const onTls = await plain(`${srv.url.replace('https', 'http')}api/state`, 'GET', auth);
      expect('error' in onTls || (onTls.status !== 200 && !onTls.body.includes('machines'))).toBe(true);
      expect((await serverFetch(srv, '/api/state', { headers: auth })).status).toBe(200);
    } finally {
      await srv.close();
    }
  });
});
