/**
 * The DHCP server under a spoofing attacker on the same LAN (issue 12), in
 * process on loopback: a DECLINE or RELEASE of another client's address, one
 * MAC hammering the server, a flood of made-up MACs draining the pool, and
 * machines the server must not answer (--pxe-unknown ignore,
 * --pxe-known-only, an ignored machine in pxe/machines.json).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createSocket, type Socket } from 'node:dgram';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeDhcp, encodeDhcp, ipBytes, MessageType, messageType, OPT, type DhcpPacket } from '../../protocol/dhcp.js';
import { DhcpServer, type DhcpServerOptions } from '../../pxe/dhcp-server.js';
import { admission, machineOverride, OVERRIDES_RECHECK_MS } from '../../pxe/service.js';
import { RateLimit } from '../../pxe/rate-limit.js';
import { ROOT, tempDir } from '../helpers.js';

function fixture(name: string): DhcpPacket {
  const text = readFileSync(join(ROOT, 'test/fixtures/dhcp', `${name}.hex`), 'utf8');
  return decodeDhcp(Buffer.from(text.split('\n').filter((l) => !l.startsWith('#')).join(''), 'hex'));
}

const servers: DhcpServer[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  for (const s of sockets.splice(0)) s.close();
});

async function until(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A full-mode server on loopback, a client socket that collects its replies, and a way to send many packets. */
async function setup(o: Partial<DhcpServerOptions>) {
  const client = createSocket('udp4');
  sockets.push(client);
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const replies: DhcpPacket[] = [];
  client.on('message', (m) => replies.push(decodeDhcp(m)));
  const server = new DhcpServer({
    mode: 'full',
    serverAddress: '127.0.0.1',
    netmask: '255.0.0.0',
    pool: { start: '127.0.0.100', end: '127.0.0.139' },
    boot: (r) => ({ file: r.ipxe ? 'http://127.0.0.1:8080/boot/ipxe' : 'undionly.kpxe' }),
    port: 0,
    pxePort: 0,
    clientPort: client.address().port,
    broadcast: '127.0.0.1',
    bindAddress: '127.0.0.1',
    ...o,
  });
  servers.push(server);
  await server.start();
  /** Sends every packet, waits until the server has taken them all in, returns the replies they got. */
  const send = async (...ps: DhcpPacket[]) => {
    const n = replies.length;
    // In rounds of 20, so that no socket buffer overflows on a busy machine.
    for (let i = 0; i < ps.length; i += 20) {
      const before = server.counters.received;
      const round = ps.slice(i, i + 20);
      for (const p of round) client.send(encodeDhcp(p), server.ports().dhcp, '127.0.0.1');
      await until('the server to read every packet', () => server.counters.received >= before + round.length);
    }
    // Replies to the last packets may still be in the kernel's queue: one more round trip settles them.
    await new Promise((r) => setTimeout(r, 50));
    return replies.slice(n);
  };
  return { server, send };
}

const chaddr = (mac: string) => Buffer.from([...mac.split(':').map((h) => parseInt(h, 16)), ...new Array(10).fill(0)]);
const macOf = (i: number) => `02:66:00:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

function packet(kind: 'discover' | 'request' | 'decline' | 'release', mac: string, o: { ip?: string; clientId?: Buffer | null; xid?: number } = {}): DhcpPacket {
  const base = fixture(kind === 'discover' ? 'udhcpc-discover' : 'udhcpc-request');
  const options = new Map(base.options);
  const type = { discover: MessageType.DISCOVER, request: MessageType.REQUEST, decline: MessageType.DECLINE, release: MessageType.RELEASE }[kind];
  options.set(OPT.MESSAGE_TYPE, Buffer.from([type]));
  // Each client names itself by its MAC in option 61, as udhcpc and dhclient do.
  options.set(OPT.CLIENT_ID, o.clientId ?? Buffer.from([1, ...chaddr(mac).subarray(0, 6)]));
  if (o.clientId === null) options.delete(OPT.CLIENT_ID);
  if (kind === 'discover') options.delete(OPT.SERVER_ID);
  else options.set(OPT.SERVER_ID, ipBytes('127.0.0.1'));
  if (kind === 'release' || o.ip === undefined) options.delete(OPT.REQUESTED_IP);
  else options.set(OPT.REQUESTED_IP, ipBytes(o.ip));
  return { ...base, xid: o.xid ?? base.xid, chaddr: chaddr(mac), ciaddr: kind === 'release' ? o.ip! : '0.0.0.0', options };
}

/** A whole DISCOVER-OFFER-REQUEST-ACK for mac; its address. */
async function lease(send: Awaited<ReturnType<typeof setup>>['send'], mac: string): Promise<string> {
  const offers = (await send(packet('discover', mac))).filter((r) => messageType(r) === MessageType.OFFER);
  expect(offers, `an offer for ${mac}`).toHaveLength(1);
  const acks = await send(packet('request', mac, { ip: offers[0].yiaddr }));
  expect(acks.map(messageType)).toEqual([MessageType.ACK]);
  return offers[0].yiaddr;
}

describe('DHCP against a spoofing client on the same LAN', () => {
  it('a DECLINE or RELEASE of another client\'s address changes nothing; the holder\'s own DECLINE counts', async () => {
    const { server, send } = await setup({});
    const victim = '02:66:00:00:00:01';
    const ip = await lease(send, victim);
    // Another machine, and a forged packet with the victim's MAC but not its client identifier.
    await send(packet('decline', '02:66:00:00:00:02', { ip }));
    await send(packet('decline', victim, { ip, clientId: Buffer.from([1, 2, 0x66, 0, 0, 0, 0x99]) }));
    await send(packet('release', '02:66:00:00:00:02', { ip }));
    expect(server.counters).toMatchObject({ declines: 0, releases: 0, notHolder: 3 });
    expect(server.leases!.get(victim)?.ip).toBe(ip);
    // The address is not held out of the pool: the victim renews it.
    expect((await send(packet('request', victim, { ip }))).map(messageType)).toEqual([MessageType.ACK]);
    await send(packet('decline', victim, { ip }));
    expect(server.counters.declines).toBe(1);
    expect(server.leases!.get(victim)).toBeUndefined();
  });

  it('one MAC is answered at most its burst, then at its rate; other MACs are still answered', async () => {
    const { server, send } = await setup({ limits: { perMacBurst: 5, perMacEveryMs: 600_000 } });
    const noisy = '02:66:00:00:00:07';
    const replies = await send(...Array.from({ length: 40 }, (_, i) => packet('discover', noisy, { xid: i + 1 })));
    expect(replies.filter((r) => messageType(r) === MessageType.OFFER)).toHaveLength(5);
    expect(server.counters.rateLimited).toBe(35);
    await lease(send, '02:66:00:00:00:08');
  });

  it('a flood of made-up MACs (DISCOVER and REQUEST) cannot take the addresses kept for known machines', async () => {
    const known = '52:54:00:12:34:56';
    const { server, send } = await setup({ isKnown: (mac) => mac === known, limits: { newBurst: 1000 } });
    const flood: DhcpPacket[] = [];
    // 200 made-up machines, each asking for an address of the pool straight away and also the usual way.
    for (let i = 0; i < 200; i++) flood.push(packet('request', macOf(i), { ip: `127.0.0.${100 + (i % 40)}` }), packet('discover', macOf(i)));
    await send(...flood);
    // Offers of the flood hold addresses too, until they lapse; the reserve holds whatever they take.
    const reserve = Math.floor(40 * 0.25);
    expect(server.leases!.free()).toBe(reserve);
    // 30 took an address; of the other 170, 50 asked for one of the 10 free (reserved) addresses, and every one sent a DISCOVER.
    expect(server.counters.newLimited).toBe(220);
    const ip = await lease(send, known);
    expect(ip).toMatch(/^127\.0\.0\.1[0-3]\d$/);
    expect(server.leases!.get(known)?.ip).toBe(ip);
  });

  it('a made-up MAC that got an address once may have that one again, never a reserved one', async () => {
    const known = '52:54:00:12:34:56';
    // Four addresses, one kept for known machines.
    const { server, send } = await setup({ pool: { start: '127.0.0.100', end: '127.0.0.103' }, isKnown: (mac) => mac === known, limits: { newBurst: 1000 } });
    // It had 127.0.0.100 once; that lease has lapsed (bound in the past, as leases.json would keep it).
    const first = '127.0.0.100';
    server.leases!.bind(macOf(1), first, 1, '', Date.now() - 10_000);
    expect(server.leases!.get(macOf(1))).toBeUndefined();
    for (const i of [2, 3, 4]) await lease(send, macOf(i));
    expect(server.leases!.get(macOf(2))?.ip).toBe(first);
    // The one machine that had an address before comes back: its own is taken, and only the reserved one is left.
    expect(await send(packet('discover', macOf(1)))).toEqual([]);
    expect(await send(packet('request', macOf(1), { ip: '127.0.0.103' }))).toEqual([]);
    expect(await lease(send, known)).toBe('127.0.0.103');
  });

  it('new machines get addresses at a bounded rate; a machine with a lease already is not limited', async () => {
    const { server, send } = await setup({ limits: { newBurst: 4, newEveryMs: 600_000 } });
    const first = await lease(send, macOf(1000));
    const replies = await send(...Array.from({ length: 30 }, (_, i) => packet('discover', macOf(i))));
    expect(replies.filter((r) => messageType(r) === MessageType.OFFER)).toHaveLength(3);
    expect(server.counters.newLimited).toBe(27);
    // The machine seen before renews and asks again from scratch, as after a reboot.
    expect((await send(packet('request', macOf(1000), { ip: first }))).map(messageType)).toEqual([MessageType.ACK]);
    expect((await send(packet('discover', macOf(1000))))[0].yiaddr).toBe(first);
  });

  it('--pxe-unknown ignore and --pxe-known-only: an unknown machine gets no address and no boot file; a known one both', async () => {
    const data = tempDir('admit');
    mkdirSync(join(data, 'pxe'));
    const registered = '52:54:00:00:00:01';
    const listed = '52:54:00:00:00:02';
    const ignored = '52:54:00:00:00:03';
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ [listed]: { action: 'menu' }, [ignored]: { ignore: true } }));
    for (const flags of [{ unknown: 'ignore' as const }, { knownOnly: true }]) {
      const { knows, admit } = admission({ dataRoot: data, isKnown: (mac) => mac === registered, statics: new Map([['52:54:00:00:00:04', '127.0.0.50']]), ...flags });
      const { server, send } = await setup({ admit, isKnown: knows });
      for (const stranger of ['02:66:00:00:00:09', ignored]) {
        const pxe = { ...fixture('ipxe-bios-discover'), chaddr: chaddr(stranger) };
        expect(await send(pxe, packet('discover', stranger), packet('request', stranger, { ip: '127.0.0.100' }))).toEqual([]);
      }
      expect(server.counters.notAdmitted).toBe(6);
      expect(server.leases!.list()).toEqual([]);
      for (const mac of [registered, listed, '52:54:00:00:00:04']) {
        const [offer] = await send({ ...fixture('ipxe-bios-discover'), chaddr: chaddr(mac) });
        expect(messageType(offer)).toBe(MessageType.OFFER);
        expect(offer.file).toBe('http://127.0.0.1:8080/boot/ipxe');
      }
      await servers.pop()!.close();
    }
    // Without either flag everyone but the ignored machine is answered.
    const open = admission({ dataRoot: data });
    expect([open.admit('02:66:00:00:00:09'), open.admit(listed), open.admit(ignored)]).toEqual([true, true, false]);
  });

  it('pxe/machines.json is read again only when it changed, and looked at no more than once a second', () => {
    const data = tempDir('ovr-cache');
    mkdirSync(join(data, 'pxe'));
    const path = join(data, 'pxe', 'machines.json');
    const mac = '52:54:00:00:00:01';
    const t = 1_000_000_000_000;
    writeFileSync(path, JSON.stringify({ [mac]: { action: 'menu' } }));
    expect(machineOverride(data, mac, t)).toEqual({ action: 'menu' });
    writeFileSync(path, JSON.stringify({ [mac]: { action: 'agent', ignore: true } }));
    // Within the second: the copy in memory.
    expect(machineOverride(data, mac, t + OVERRIDES_RECHECK_MS - 1)).toEqual({ action: 'menu' });
    expect(machineOverride(data, mac, t + OVERRIDES_RECHECK_MS)).toEqual({ action: 'agent', ignore: true });
    expect(machineOverride(data, '__proto__', t + OVERRIDES_RECHECK_MS)).toBeUndefined();
  });

  it('rate limits: a burst, then one per period; a flood of made-up keys keeps the table bounded', () => {
    const r = new RateLimit({ burst: 3, everyMs: 1000, maxKeys: 100 });
    const t = 1_000_000;
    expect([1, 2, 3, 4].map(() => r.take('a', t))).toEqual([true, true, true, false]);
    expect(r.waitMs('a', t)).toBe(1000);
    expect(r.take('a', t + 999)).toBe(false);
    expect(r.take('a', t + 1999)).toBe(true);
    for (let i = 0; i < 10_000; i++) r.take(`flood-${i}`, t + 2000);
    expect(r.size).toBeLessThanOrEqual(100);
  });
});
