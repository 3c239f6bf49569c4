/**
 * A whole deploy in the namespace lab, recorded by tcpdump in the server's
 * namespace (every interface: the agents' link and the loopback the admin
 * commands use): the recording holds no token, no Authorization header, no
 * Hello in clear, and none of the session's keys (its secret, the data key,
 * each machine's receiver key: they travel in the Assign, over TLS) although
 * the recording holds the whole multicast stream. A plain-HTTP request with a
 * marker, sent to the same port during the recording, shows that the recorder
 * sees cleartext where there is some.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { itNeeds, missing, tempDir } from '../helpers.js';
import { Fleet, PORT, until } from './fleet.js';
import { deriveKey, receiverLabel } from '../../protocol/mac.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const N = 2;
const CAPS = ['netns', 'curl', 'tcpdump'];

describe('a sniffed deploy', () => {
  const dir = tempDir('sniff');
  const data = join(dir, 'data');
  const pcap = join(dir, 'deploy.pcap');
  let fleet: Fleet;
  let dump: ChildProcess | undefined;
  let dumpErr = '';

  beforeAll(async () => {
    if (missing(CAPS).length > 0) return;
    const raw = join(dir, 'img.raw');
    makeImage(raw, 8, { seed: 21 });
    await importImage(Store.open(data), raw, 'img', {});
    fleet = new Fleet(dir, data, N);
    for (let k = 0; k < N; k++) fleet.disk(k, 12 * MiB);
    await fleet.startServer();
    // -U: each packet is written as it comes, so what is on disk is whole when tcpdump stops.
    dump = fleet.lab.spawnIn(fleet.lab.server.ns, 'tcpdump', ['-i', 'any', '-n', '-U', '-s', '0', '-w', pcap, 'tcp or udp']);
    dump.stderr?.on('data', (d) => (dumpErr += d));
    await until(() => /listening on/.test(dumpErr), 15_000, 'tcpdump to listen');
  }, 120_000);
  afterAll(() => fleet?.down());

  itNeeds(CAPS, 'holds no token, no Authorization header and no Hello in clear, while a plain-HTTP marker shows up', async () => {
    for (let k = 0; k < N; k++) fleet.startAgent(k);
    await until(async () => (await fleet.online()) === N, 30_000, `${N} agents online`);
    const d = fleet.deploy('img', ['--any', '--clients', String(N)]);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
    // The control: a request in clear to the TLS port (it is not answered, but it crosses the wire).
    fleet.lab.execIn(fleet.lab.server.ns, 'sh', ['-c', `curl -s -m 3 -H 'x-marker: plain-marker-5f3a' http://10.77.0.1:${PORT}/ || true`]);
    await new Promise((r) => setTimeout(r, 500));
    dump!.kill('SIGINT');
    await until(() => dump!.exitCode !== null || dump!.signalCode !== null, 10_000, 'tcpdump to stop');
    expect(existsSync(pcap)).toBe(true);
    const bytes = readFileSync(pcap);
    // Something was recorded: the deploy's traffic, TLS records (content type 0x17, version 0x0303) among it.
    expect(statSync(pcap).size).toBeGreaterThan(20_000);
    expect(bytes.includes(Buffer.from([0x17, 0x03, 0x03]))).toBe(true);
    expect(bytes.includes(Buffer.from('plain-marker-5f3a'))).toBe(true);
    expect(bytes.includes(Buffer.from(fleet.token)), 'the server token in clear').toBe(false);
    expect(bytes.includes(Buffer.from(fleet.token.toUpperCase()))).toBe(false);
    expect(bytes.includes(Buffer.from('Bearer '))).toBe(false);
    expect(bytes.toString('latin1').toLowerCase().includes('authorization:')).toBe(false);
    expect(bytes.includes(Buffer.from('/api/sessions'))).toBe(false);
    // The multicast stream was recorded (DATA carries the magic "CCMC"), yet no key of the session is in it.
    expect(bytes.includes(Buffer.from('CCMC'))).toBe(true);
    const [session] = JSON.parse(readFileSync(join(data, 'sessions.json'), 'utf8')) as { secret: string; nonce: string; machines: Record<string, { receiverId: number }> }[];
    const secret = Buffer.from(session.secret, 'hex');
    const receivers = Object.values(session.machines).map((m) => m.receiverId);
    expect(receivers).toHaveLength(N);
    const keys: [string, Buffer][] = [
      ['the session secret', secret],
      ['the session secret (hex)', Buffer.from(session.secret)],
      ['the data key', deriveKey(secret, 'data')],
      ['the result nonce', Buffer.from(session.nonce, 'hex')],
      ...receivers.map((id): [string, Buffer] => [`receiver ${id}'s key`, deriveKey(secret, receiverLabel(id))]),
    ];
    for (const [what, key] of keys) expect(bytes.includes(key), `${what} in clear`).toBe(false);
  }, 180_000);
});
