/**
 * A TFTP read-request flood as a student at a machine being imaged could
 * send it (issue 12: ~28,400 spoofed 62-byte RRQs took the server to its
 * file descriptor limit and ended it): RRQs from many source addresses and
 * ports on loopback (127.0.2.0/24, from a child process that never answers,
 * like a spoofed source), asking timeout=255, windowsize=64, blksize=65464.
 * Meanwhile a real tftp-hpa client downloads a file from the same server:
 * it must arrive intact, the server's transfers and open descriptors stay
 * under the caps, nothing is buffered for a client that never answered
 * beyond one small block, the options are clamped in the OACK, and
 * everything the flood took is given back once it stops.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeTftp, encodeTftp, Opcode } from '../../protocol/tftp.js';
import { TFTP_DEFAULTS, TftpServer } from '../../pxe/tftp-server.js';
import { itNeeds, run, seeded, tempDir } from '../helpers.js';

/** The flood: 5 RRQs every 10 ms, one in five from 127.0.2.1 (many ports), the rest from other addresses; never answers. */
const FLOOD = `
import { createSocket } from 'node:dgram';
const port = Number(process.argv[2]);
const z = (s) => Buffer.from(s + '\\0', 'latin1');
const withOptions = Buffer.concat([Buffer.from([0, 1]), z('file.bin'), z('octet'), z('timeout'), z('255'), z('windowsize'), z('64'), z('blksize'), z('65464'), z('tsize'), z('0')]);
const plain = Buffer.concat([Buffer.from([0, 1]), z('file.bin'), z('octet')]);
let n = 0;
setInterval(() => {
  for (let i = 0; i < 5; i++, n++) {
    const s = createSocket('udp4');
    const from = n % 5 === 0 ? '127.0.2.1' : '127.0.2.' + (2 + (n % 250));
    s.on('error', () => s.close());
    s.bind(0, from, () => s.send(n % 4 === 0 ? plain : withOptions, port, '127.0.0.1', () => s.close()));
  }
}, 10);
setTimeout(() => process.exit(0), 300_000);
`;

async function until(what: string, cond: () => boolean, ms = 90_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const fds = () => readdirSync('/proc/self/fd').length;

describe('TFTP under a spoofed read-request flood', () => {
  const dir = tempDir('tftp-flood');
  const root = join(dir, 'root');
  const file = seeded(2_000_000, 7);
  let server: TftpServer;
  let port = 0;
  let flood: ChildProcess | undefined;

  beforeAll(async () => {
    mkdirSync(root, { recursive: true });
    writeFileSync(join(root, 'file.bin'), file);
    writeFileSync(join(dir, 'flood.mjs'), FLOOD);
    server = new TftpServer({ root, address: '127.0.0.1', port: 0 });
    port = await server.start();
  });
  afterAll(() => {
    if (flood?.exitCode === null) flood.kill();
    server?.close();
  });

  itNeeds(['tftp'], 'a real download completes intact; transfers, descriptors and buffers stay under the caps; options are clamped', async () => {
    const baseline = fds();
    const peak = { active: 0, fds: 0, unanswered: 0 };
    const sample = setInterval(() => {
      peak.active = Math.max(peak.active, server.active);
      peak.fds = Math.max(peak.fds, fds());
      peak.unanswered = Math.max(peak.unanswered, server.buffered().unanswered);
    }, 10);
    try {
      flood = spawn(process.execPath, [join(dir, 'flood.mjs'), String(port)], { stdio: 'ignore' });
      // The flood has filled every place and is evicting its own transfers.
      await until('the flood to fill the transfers', () => server.counters.evicted > 0 && server.counters.busy > 0);

      // The options a flood asks for, as the server answers them.
      const probe = createSocket('udp4');
      await new Promise<void>((r) => probe.bind(0, '127.0.3.1', () => r()));
      const oack = new Promise<Map<string, string>>((resolve) => {
        probe.on('message', (m) => {
          const p = decodeTftp(m);
          if (p.op === Opcode.OACK) resolve(p.options);
        });
      });
      const options = new Map([['timeout', '255'], ['windowsize', '64'], ['blksize', '65464'], ['tsize', '0']]);
      probe.send(encodeTftp({ op: Opcode.RRQ, filename: 'file.bin', mode: 'octet', options }), port, '127.0.0.1');
      const agreed = await oack;
      probe.close();
      expect(Object.fromEntries(agreed)).toEqual({ blksize: String(TFTP_DEFAULTS.maxBlksize), windowsize: String(TFTP_DEFAULTS.maxWindow), tsize: String(file.length) });

      // A real client, from 127.0.0.1, while the flood goes on.
      const before = server.counters.requests;
      const out = join(dir, 'got.bin');
      const r = await run('tftp', ['-m', 'binary', '127.0.0.1', String(port), '-c', 'get', 'file.bin', out], dir);
      expect(r.code, r.out).toBe(0);
      expect(readFileSync(out).equals(file), 'the downloaded file differs').toBe(true);
      expect(server.counters.requests - before, 'the flood went on during the download').toBeGreaterThan(20);
    } finally {
      if (flood?.exitCode === null) flood.kill();
      clearInterval(sample);
    }
    expect(peak.active).toBeLessThanOrEqual(TFTP_DEFAULTS.maxTransfers);
    // One socket per transfer; a file only once its client answered (the real one). Slack: this test's own pipes and socket, and sockets of evicted transfers whose close is still under way.
    expect(peak.fds - baseline).toBeLessThanOrEqual(TFTP_DEFAULTS.maxTransfers + 32);
    // A request whose client never answered holds at most one 512-byte block (and its packet).
    expect(peak.unanswered).toBeLessThanOrEqual(TFTP_DEFAULTS.maxTransfers * 2 * (512 + 4));
    expect(server.counters).toMatchObject({ completed: expect.any(Number) });
    expect(server.counters.completed).toBeGreaterThanOrEqual(1);
    // Once the flood stops, what it took is given back: its transfers give up (1+2+4+8 s) and their sockets close.
    await until('the flood\'s transfers to end', () => server.active === 0);
    expect(fds() - baseline).toBeLessThanOrEqual(8);
  }, 180_000);
});
