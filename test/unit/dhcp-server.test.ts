/**
 * The DHCP server's decisions, in-process on loopback, driven with packets
 * captured from real clients (test/fixtures/dhcp) and variations of them:
 * RFC 2131 full mode (offer, ACK/NAK, another server selected, DECLINE,
 * INFORM, relays) and proxy mode (PXE clients only, the port-4011 exchange).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientArch, decodeDhcp, encodeDhcp, ipBytes, MessageType, messageType, OPT, optionIp, type DhcpPacket } from '../../protocol/dhcp.js';
import { DhcpServer, type DhcpServerOptions } from '../../pxe/dhcp-server.js';
import { ROOT, tempDir } from '../helpers.js';

function fixture(name: string): DhcpPacket {
  const text = readFileSync(join(ROOT, 'test/fixtures/dhcp', `${name}.hex`), 'utf8');
  return decodeDhcp(Buffer.from(text.split('\n').filter((l) => !l.startsWith('#')).join(''), 'hex'));
}

const servers: DhcpServer[] = [];
const sockets: Socket[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
  for (const s of sockets.splice(0)) s.close();
});

/** A server on loopback and a client socket that receives its replies. */
async function setup(o: Partial<DhcpServerOptions>) {
  const client = createSocket('udp4');
  sockets.push(client);
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  const replies: { p: DhcpPacket; from: number }[] = [];
  client.on('message', (m, r) => replies.push({ p: decodeDhcp(m), from: r.port }));
  const server = new DhcpServer({
    mode: 'full',
    serverAddress: '127.0.0.1',
    netmask: '255.0.0.0',
    pool: { start: '127.0.0.100', end: '127.0.0.101' },
    boot: (r) => ({ file: r.ipxe ? 'http://127.0.0.1:8080/boot/ipxe' : r.arch === 7 ? 'ipxe.efi' : 'undionly.kpxe' }),
    port: 0,
    pxePort: 0,
    clientPort: client.address().port,
    relayPort: client.address().port,
    broadcast: '127.0.0.1',
    bindAddress: '127.0.0.1',
    ...o,
  });
  servers.push(server);
  await server.start();
  const send = async (p: DhcpPacket, port = server.ports().dhcp) => {
    const n = replies.length;
    client.send(encodeDhcp(p), port, '127.0.0.1');
    await new Promise((r) => setTimeout(r, 100));
    return replies.slice(n).map((x) => x.p);
  };
  return { server, send, replies };
}

function withOptions(p: DhcpPacket, set: [number, Buffer | null][], change: Partial<DhcpPacket> = {}): DhcpPacket {
  const options = new Map(p.options);
  for (const [code, v] of set) {
    if (v === null) options.delete(code);
    else options.set(code, v);
  }
  return { ...p, ...change, options };
}

const type = (t: MessageType): [number, Buffer] => [OPT.MESSAGE_TYPE, Buffer.from([t])];

describe('DHCP server, full mode', () => {
  it('offers, acknowledges and adds boot information only for PXE clients', async () => {
    const { send, server } = await setup({ leasesPath: join(tempDir('dhcp'), 'leases.json') });
    const [offer] = await send(fixture('udhcpc-discover'));
    expect(messageType(offer)).toBe(MessageType.OFFER);
    expect(offer.yiaddr).toBe('127.0.0.100');
    expect(offer.file).toBe('');
    expect(offer.options.get(OPT.SUBNET_MASK)).toEqual(ipBytes('255.0.0.0'));
    expect(offer.options.get(OPT.LEASE_TIME)?.readUInt32BE(0)).toBe(3600);
    const [ack] = await send(withOptions(fixture('udhcpc-request'), [[OPT.REQUESTED_IP, ipBytes('127.0.0.100')], [OPT.SERVER_ID, ipBytes('127.0.0.1')]]));
    expect(messageType(ack)).toBe(MessageType.ACK);
    const [pxe] = await send(fixture('ipxe-bios-discover'));
    expect(pxe.yiaddr).toBe('127.0.0.101');
    expect(pxe.siaddr).toBe('127.0.0.1');
    expect(pxe.file).toBe('http://127.0.0.1:8080/boot/ipxe');
    expect(pxe.options.get(OPT.VENDOR_CLASS)?.toString()).toBe('PXEClient');
    expect(server.counters).toMatchObject({ offers: 2, acks: 1 });
  });

  it('an ACK is sent only once its lease is on disk: a lease that cannot be saved gets no ACK, and the retry does', async () => {
    const dir = tempDir('dhcp');
    const path = join(dir, 'pxe', 'leases.json');
    // The disk "fails": a file stands where the leases' folder should be.
    writeFileSync(join(dir, 'pxe'), 'x');
    const { send, server } = await setup({ leasesPath: path });
    await send(fixture('udhcpc-discover'));
    const request = withOptions(fixture('udhcpc-request'), [[OPT.REQUESTED_IP, ipBytes('127.0.0.100')], [OPT.SERVER_ID, ipBytes('127.0.0.1')]]);
    expect(await send(request)).toEqual([]);
    expect(server.counters).toMatchObject({ acks: 0, unsaved: 1 });
    expect(server.leases!.health()).toMatchObject({ ok: false });
    rmSync(join(dir, 'pxe'));
    await new Promise((r) => setTimeout(r, 600)); // a failing file is tried again at most every 0.5 s
    const [ack] = await send(request);
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toEqual([expect.objectContaining({ ip: '127.0.0.100' })]);
    expect(server.counters).toMatchObject({ acks: 1, unsaved: 1 });
    expect(server.leases!.health()).toMatchObject({ ok: true });
  });

  it('NAKs a request for an address it cannot give, and stays silent when another server was chosen', async () => {
    const { send, server } = await setup({});
    await send(fixture('dhclient-discover'));
    const other = await send(withOptions(fixture('dhclient-request'), [[OPT.SERVER_ID, ipBytes('127.0.0.2')], [OPT.REQUESTED_IP, ipBytes('127.0.0.100')]]));
    expect(other).toEqual([]);
    const wrong = await send(withOptions(fixture('dhclient-request'), [[OPT.SERVER_ID, ipBytes('127.0.0.1')], [OPT.REQUESTED_IP, ipBytes('127.0.0.250')]]));
    expect(messageType(wrong[0])).toBe(MessageType.NAK);
    expect(wrong[0].yiaddr).toBe('0.0.0.0');
    // INIT-REBOOT from another network: NAK; for an address in ours it has no record of: silence.
    expect(messageType((await send(withOptions(fixture('dhclient-request'), [[OPT.SERVER_ID, null], [OPT.REQUESTED_IP, ipBytes('10.1.2.3')]])))[0])).toBe(MessageType.NAK);
    expect(await send(withOptions(fixture('dhclient-request'), [[OPT.SERVER_ID, null], [OPT.REQUESTED_IP, ipBytes('127.0.0.100')]]))).toEqual([]);
    expect(server.counters.naks).toBe(2);
  });

  it('a full pool is logged and not answered; a DECLINE takes the address out of the pool', async () => {
    const logs: string[] = [];
    const { send, server } = await setup({ log: (_l, m) => logs.push(m) });
    const mac = (n: number) => Buffer.from([2, 0, 0, 0, 0, n, ...new Array(10).fill(0)]);
    const d = fixture('udhcpc-discover');
    const a = (await send({ ...d, chaddr: mac(1) }))[0];
    await send(withOptions(fixture('udhcpc-request'), [[OPT.REQUESTED_IP, ipBytes(a.yiaddr)], [OPT.SERVER_ID, ipBytes('127.0.0.1')]], { chaddr: mac(1) }));
    const b = (await send({ ...d, chaddr: mac(2) }))[0];
    expect(b.yiaddr).toBe('127.0.0.101');
    expect(await send({ ...d, chaddr: mac(3) })).toEqual([]);
    expect(logs.some((l) => /pool 127\.0\.0\.100-127\.0\.0\.101 is full/.test(l))).toBe(true);
    // mac 1 says its address is in use: nobody gets it for a while.
    await send(withOptions(d, [type(MessageType.DECLINE), [OPT.REQUESTED_IP, ipBytes(a.yiaddr)], [OPT.SERVER_ID, ipBytes('127.0.0.1')]], { chaddr: mac(1) }));
    expect(server.counters.declines).toBe(1);
    expect(server.leases!.get('02:00:00:00:00:01')).toBeUndefined();
    expect(await send({ ...d, chaddr: mac(4) })).toEqual([]);
  });

  it('gives a static address to its MAC only', async () => {
    const { send } = await setup({ statics: new Map([['02:77:00:00:00:01', '127.0.0.50']]) });
    const d = fixture('udhcpc-discover');
    const other = (await send({ ...d, chaddr: Buffer.from([2, 0, 0, 0, 0, 9, ...new Array(10).fill(0)]) }))[0];
    expect(other.yiaddr).toBe('127.0.0.100');
    const mine = (await send({ ...d, chaddr: Buffer.from([2, 0x77, 0, 0, 0, 1, ...new Array(10).fill(0)]) }))[0];
    expect(mine.yiaddr).toBe('127.0.0.50');
    const steal = await send(withOptions(fixture('udhcpc-request'), [[OPT.REQUESTED_IP, ipBytes('127.0.0.50')], [OPT.SERVER_ID, ipBytes('127.0.0.1')]], { chaddr: Buffer.from([2, 0, 0, 0, 0, 9, ...new Array(10).fill(0)]) }));
    expect(messageType(steal[0])).toBe(MessageType.NAK);
  });

  it('answers INFORM with configuration only, to the client\'s address', async () => {
    const { send } = await setup({ router: '127.0.0.254' });
    const [ack] = await send(withOptions(fixture('dhclient-request'), [type(MessageType.INFORM), [OPT.REQUESTED_IP, null], [OPT.SERVER_ID, null]], { ciaddr: '127.0.0.1' }));
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(ack.yiaddr).toBe('0.0.0.0');
    expect(ack.options.has(OPT.LEASE_TIME)).toBe(false);
    expect(optionIp(ack, OPT.ROUTER)).toBe('127.0.0.254');
  });

  it('replies to a relay agent at giaddr', async () => {
    const { send } = await setup({});
    const [offer] = await send({ ...fixture('udhcpc-discover'), giaddr: '127.0.0.1', hops: 1 });
    expect(offer.giaddr).toBe('127.0.0.1');
    expect(messageType(offer)).toBe(MessageType.OFFER);
  });
});

describe('DHCP server, proxy mode', () => {
  it('never answers a plain client, and never hands out an address', async () => {
    const { send, server } = await setup({ mode: 'proxy', pool: undefined });
    expect(await send(fixture('udhcpc-discover'))).toEqual([]);
    expect(await send(fixture('dhclient-discover'))).toEqual([]);
    const [offer] = await send(fixture('ovmf-uefi-discover'));
    expect(offer.yiaddr).toBe('0.0.0.0');
    expect(offer.file).toBe('ipxe.efi');
    expect(offer.options.get(OPT.VENDOR_CLASS)?.toString()).toBe('PXEClient');
    expect(offer.options.get(OPT.VENDOR_SPECIFIC)?.toString('hex')).toBe('060108ff');
    expect(offer.options.get(OPT.CLIENT_UUID)).toEqual(fixture('ovmf-uefi-discover').options.get(OPT.CLIENT_UUID));
    expect(server.counters).toMatchObject({ proxyOffers: 1, offers: 0, acks: 0 });
    // The client's REQUEST to the lab's DHCP server is not ours.
    expect(await send(withOptions(fixture('ovmf-uefi-request'), [[OPT.SERVER_ID, ipBytes('127.0.0.2')]]))).toEqual([]);
  });

  it('serves the port-4011 boot-server exchange with an ACK to the sender', async () => {
    const { send, server } = await setup({ mode: 'proxy', pool: undefined });
    const req = withOptions(fixture('ovmf-uefi-request'), [[OPT.SERVER_ID, ipBytes('127.0.0.1')]], { ciaddr: '127.0.0.1' });
    expect(clientArch(req)).toBe(7);
    const [ack] = await send(req, server.ports().pxe);
    expect(messageType(ack)).toBe(MessageType.ACK);
    expect(ack.file).toBe('ipxe.efi');
    expect(ack.siaddr).toBe('127.0.0.1');
    expect(server.counters.bootAcks).toBe(1);
  });
});
