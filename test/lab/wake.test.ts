/**
 * Wake-on-LAN in the namespace lab: tcpdump on a client's link records what
 * the server sends for `clonecast wake MAC`, `wake --group` and
 * `deploy --wake`, and every magic packet is checked byte for byte (6 x 0xFF,
 * then the MAC 16 times) with the frame's Ethernet and IP broadcast
 * destinations and UDP port 9.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { itNeeds, missing, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { decodeMagic, WOL } from '../../protocol/wol.js';

const CAPS = ['netns', 'curl', 'tcpdump'];
const FAKE = '02:00:00:77:00:01'; // a machine the server does not know

/** One recorded UDP datagram. */
interface Datagram {
  ethDst: string;
  ipDst: string;
  port: number;
  payload: Buffer;
}

/** The UDP datagrams of a pcap file (link type Ethernet, as tcpdump -i eth0 writes it). */
function udpDatagrams(file: string): Datagram[] {
  const b = readFileSync(file);
  const le = b.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  expect(u32(20), 'link type Ethernet').toBe(1);
  const out: Datagram[] = [];
  for (let o = 24; o + 16 <= b.length; ) {
    const len = u32(o + 8);
    const f = b.subarray(o + 16, o + 16 + len);
    o += 16 + len;
    if (f.length < 42 || f.readUInt16BE(12) !== 0x0800 || f[23] !== 17) continue;
    const ip = f.subarray(14);
    const udp = ip.subarray((ip[0] & 0x0f) * 4);
    out.push({ ethDst: f.subarray(0, 6).toString('hex'), ipDst: [...ip.subarray(16, 20)].join('.'), port: udp.readUInt16BE(2), payload: udp.subarray(8, udp.readUInt16BE(4)) });
  }
  return out;
}

describe('Wake-on-LAN', () => {
  const dir = tempDir('wake');
  const data = join(dir, 'data');
  const pcap = join(dir, 'wake.pcap');
  let fleet: Fleet;
  let dump: ChildProcess | undefined;
  let dumpErr = '';

  beforeAll(async () => {
    if (missing(CAPS).length > 0) return;
    const raw = join(dir, 'img.raw');
    writeFileSync(raw, Buffer.alloc(1 << 20, 7));
    await importImage(Store.open(data), raw, 'img', {});
    fleet = new Fleet(dir, data, 1);
    fleet.disk(0, 4 << 20);
    await fleet.startServer(['--wake-broadcast', '10.77.0.255']);
    dump = fleet.lab.spawnIn(fleet.lab.clients[0].ns, 'tcpdump', ['-i', 'eth0', '-n', '-U', '-s', '0', '-w', pcap, 'udp port 9']);
    dump.stderr?.on('data', (d) => (dumpErr += d));
    await until(() => /listening on/.test(dumpErr), 15_000, 'tcpdump to listen');
  }, 120_000);
  afterAll(() => {
    if (dump !== undefined && dump.exitCode === null) dump.kill('SIGKILL');
    fleet?.down();
  });

  itNeeds(CAPS, 'sends magic packets for a MAC, a group and a deploy, to the limited and the directed broadcast', async () => {
    // The agent registers the machine, which then gets a group.
    fleet.startAgent(0);
    await until(async () => (await fleet.online()) === 1, 30_000, 'the agent online');
    const mac = fleet.mac(0);
    const set = fleet.run(['machines', 'set', mac, '--groups', 'room101']);
    expect(await set.exited, set.out).toBe(0);

    const one = fleet.run(['wake', FAKE]);
    expect(await one.exited, one.out).toBe(0);
    expect(one.out).toMatch(/sent 6 wake-up packets for 1 machine to 255\.255\.255\.255, 10\.77\.0\.255/);
    expect(one.out).toMatch(/not known to the server/);

    const group = fleet.run(['wake', '--group', 'room101']);
    expect(await group.exited, group.out).toBe(0);
    expect(group.out).toContain(mac);

    // A typo wakes nothing: refused before the server is asked.
    const typo = fleet.run(['wake', '52:54:00:12:34']);
    expect(await typo.exited).toBe(2);
    expect(typo.out).toMatch(/is not a MAC address/);
    const none = fleet.run(['wake', '--group', 'nosuchroom']);
    expect(await none.exited).not.toBe(0);
    expect(none.out).toMatch(/no machine is in group "nosuchroom"/);

    // deploy --wake: the session names a machine that is not there; it is woken once the session exists.
    const d = fleet.deploy('img', ['--machines', FAKE.replace('01', '02'), '--wake']);
    await until(() => /woke 1 machine/.test(d.out) || d.child.exitCode !== null, 30_000, 'deploy --wake to say it woke the machine');
    expect(d.out).toMatch(/woke 1 machine \(Wake-on-LAN to 255\.255\.255\.255, 10\.77\.0\.255\)/);
    const sessions = (await fleet.api('GET', '/api/sessions')) as { id: number }[];
    await fleet.api('POST', `/api/sessions/${sessions[0].id}/cancel`);
    await d.exited;

    // A session whose wake-up fails still exists, and says so (a retry would make a second session).
    const empty = fleet.deploy('img', ['--group', 'emptyroom', '--wake']);
    await until(() => /not woken/.test(empty.out) || empty.child.exitCode !== null, 30_000, 'deploy --wake to say nothing was woken');
    expect(empty.out).toMatch(/warning: the machines were not woken: session \d+: its group "emptyroom" has no machines yet/);
    const all = (await fleet.api('GET', '/api/sessions')) as { id: number; state: string }[];
    expect(all).toHaveLength(2);
    await fleet.api('POST', `/api/sessions/${Math.max(...all.map((x) => x.id))}/cancel`);
    await empty.exited;

    await new Promise((r) => setTimeout(r, 300));
    dump!.kill('SIGINT');
    await until(() => dump!.exitCode !== null || dump!.signalCode !== null, 10_000, 'tcpdump to stop');
    const seen = udpDatagrams(pcap);
    const woken = new Map<string, Set<string>>();
    for (const g of seen) {
      expect(g.port).toBe(WOL.PORT);
      expect(g.ethDst).toBe('ffffffffffff');
      const m = decodeMagic(g.payload);
      expect(m, `payload ${g.payload.toString('hex')}`).not.toBeNull();
      expect(g.payload).toHaveLength(WOL.SIZE);
      if (!woken.has(m!)) woken.set(m!, new Set());
      woken.get(m!)!.add(g.ipDst);
    }
    expect([...woken.keys()].sort()).toEqual([FAKE, FAKE.replace('01', '02'), mac].sort());
    for (const [, to] of woken) expect([...to].sort()).toEqual(['10.77.0.255', '255.255.255.255']);
    // Three copies of each packet to each destination, per request: 6 for FAKE, 6 for the group, 6 for the deploy.
    expect(seen).toHaveLength(18);
  }, 180_000);
});
