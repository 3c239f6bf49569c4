/**
 * Parity repair in the engine, over the in-memory network: many receivers with
 * independent loss, hostile parity packets, a receiver that needs more than
 * parity can give, and peers of another protocol version.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Sender } from '../../transfer/sender.js';
import { Receiver } from '../../transfer/receiver.js';
import { CHUNK } from '../../protocol/chunk.js';
import { chunkAt, ChunkKind, tableLength } from '../../protocol/manifest.js';
import { MacKey } from '../../protocol/mac.js';
import { encodeData, encodeParity, encodeStatus, fragmentCount, MCAST, ReceiverState, stripeCount } from '../../protocol/mcast.js';
import { ERR, isError } from '../../protocol/errors.js';
import { FakeNetwork } from './fake-network.js';
import { seeded, tempDir, until } from '../helpers.js';

const C = 256 << 10;
const F = 1000;
const SENDER = '10.0.0.1';
const GROUP = '239.77.0.1';

async function setup(dir: string) {
  const store = Store.open(join(dir, 'data'));
  const src = join(dir, 'disk.img');
  const disk = seeded(8 * C - 3000, 5); // random: every chunk stored raw, 8 chunks of 263 fragments (9 stripes)
  writeFileSync(src, disk);
  await importImage(store, src, 'par', { chunkSize: C, workers: 1 });
  const { name, version } = store.resolve(parseRef('par'));
  const manifest = await store.readManifest(name, version);
  let copies = 0;
  for (let i = 0; i < tableLength(manifest.table); i++) {
    const c = chunkAt(manifest.table, i);
    if (c.kind === ChunkKind.DATA) copies += fragmentCount(CHUNK.HEADER_SIZE + c.storedLength, F);
  }
  return { store, manifest, disk, copies };
}

type Setup = Awaited<ReturnType<typeof setup>>;

function makeSender(s: Setup, net: FakeNetwork, extra: Partial<ConstructorParameters<typeof Sender>[0]> = {}) {
  return new Sender({
    manifest: s.manifest,
    loadChunk: (i) => s.store.readChunk(chunkAt(s.manifest.table, i).sha256),
    group: GROUP,
    port: 9000,
    address: SENDER,
    rateMbit: 200,
    fragmentSize: F,
    createSocket: net.factory(SENDER),
    openAdmission: true,
    hold: true,
    ...extra,
  });
}

function makeReceiver(sender: Sender, port: number, s: Setup, net: FakeNetwork, id: number, target: string) {
  return new Receiver({
    session: { session: sender.session, group: GROUP, port: 9000, sender: { address: SENDER, port }, fragmentSize: F },
    manifest: s.manifest,
    target,
    receiverId: id,
    keys: { data: sender.dataKey, receiver: sender.receiverKeyFor(id) },
    createSocket: net.factory(`10.0.0.${id}`),
    verify: false,
  });
}


describe('parity repair over the in-memory network', () => {
  const dir = tempDir('parity-engine');

  it('16 receivers losing 5% each complete, and the sender sends well below the union of their losses', async () => {
    const s = await setup(join(dir, 'many'));
    const net = new FakeNetwork(21);
    const sender = makeSender(s, net);
    const port = await sender.start();
    const ids = Array.from({ length: 16 }, (_, i) => 20 + i);
    for (const id of ids) net.faults.set(`10.0.0.${id}`, { loss: 0.05 });
    let joined = 0;
    sender.on('join', () => ++joined === ids.length && sender.release());
    try {
      const results = await Promise.all(ids.map((id) => makeReceiver(sender, port, s, net, id, join(dir, `many-${id}.img`)).run()));
      for (const id of ids) expect(readFileSync(join(dir, `many-${id}.img`)).equals(s.disk), `receiver ${id}`).toBe(true);
      expect(results.every((r) => r.counters.lost > 0)).toBe(true);
      expect(results.some((r) => r.counters.rebuilt > 0)).toBe(true);
      // Resending the union of everyone's lost fragments costs at least 1 - 0.95^16 = 56% of one
      // copy on the first pass alone (protocol 2 did that); parity repairs each stripe with the
      // largest count any one receiver needs (measured here: 18-25% of a copy).
      const union = 1 - Math.pow(0.95, ids.length);
      const overhead = sender.counters.packetsSent / s.copies - 1;
      expect(overhead).toBeLessThan(0.7 * union);
      expect(sender.counters.parityPackets).toBeGreaterThan(0);
    } finally {
      sender.stop();
    }
  }, 120_000);

  it('a receiver that needs more than parity can give still completes (its stripes come again as data)', async () => {
    const s = await setup(join(dir, 'exhaust'));
    const net = new FakeNetwork(5);
    const sender = makeSender(s, net, { maxParity: 1, proactiveParity: 0 });
    const port = await sender.start();
    net.faults.set('10.0.0.40', { loss: 0.3 });
    sender.on('join', () => sender.release());
    try {
      const target = join(dir, 'exhaust-40.img');
      const result = await makeReceiver(sender, port, s, net, 40, target).run();
      expect(readFileSync(target).equals(s.disk)).toBe(true);
      expect(result.chunks).toBe(8);
      // One parity index per stripe, the rest of the repairs were data fragments.
      expect(sender.counters.parityPackets).toBeLessThanOrEqual(8 * stripeCount(263));
      expect(sender.counters.repairPackets).toBeGreaterThan(sender.counters.parityPackets);
    } finally {
      sender.stop();
    }
  }, 120_000);

  it('forged parity (bad MAC) changes nothing; parity with an out-of-range chunk, stripe, stripe count, index or length is dropped; signed garbage parity is never written', async () => {
    const s = await setup(join(dir, 'forged'));
    const net = new FakeNetwork(9);
    const sender = makeSender(s, net, { proactiveParity: 0 });
    const port = await sender.start();
    const target = join(dir, 'forged-50.img');
    const receiver = makeReceiver(sender, port, s, net, 50, target);
    const running = receiver.run();
    const dataKey = new MacKey(sender.dataKey);
    const stored = CHUNK.HEADER_SIZE + chunkAt(s.manifest.table, 0).storedLength;
    const stripes = stripeCount(fragmentCount(stored, F));
    const spoof = (fields: Partial<Parameters<typeof encodeParity>[1]>, key: MacKey | null, length = F) => {
      const payload = Buffer.alloc(length, 0x5a);
      const pkt = Buffer.alloc(MCAST.PARITY_HEADER + length + MCAST.MAC_SIZE);
      const n = encodeParity(pkt, { session: sender.session, seq: 3, chunk: 0, stripe: 0, stripes, storedLength: stored, parity: 0, flags: 0, payload, ...fields }, key);
      net.route(pkt.subarray(0, n), { address: SENDER, port: 4444 }, 9000, GROUP);
    };
    try {
      await until(() => sender.receivers().length === 1, 30_000, 'the receiver to join', 5);
      // Outsiders: no key, and a wrong key.
      spoof({}, null);
      spoof({}, new MacKey(Buffer.alloc(32, 7)));
      await until(() => receiver.counters.rejected.badMac >= 2, 30_000, 'the forgeries to be refused', 5);
      expect(receiver.counters.parity).toBe(0);
      expect(receiver.progress().done).toBe(0);
      // Signed, but out of range: each is counted as a bad chunk packet and dropped.
      const before = receiver.counters.rejected.badChunk;
      spoof({ chunk: tableLength(s.manifest.table) + 5 }, dataKey);
      spoof({ stripe: stripes + 1, stripes: stripes + 2 }, dataKey);
      spoof({ stripes: stripes + 1 }, dataKey);
      spoof({ storedLength: stored + 1 }, dataKey);
      spoof({}, dataKey, F - 1);
      await until(() => receiver.counters.rejected.badChunk >= before + 5, 30_000, 'the out-of-range parity to be dropped', 5);
      // A parity index past the last one, or a stripe past the count, does not even decode.
      const malformed = receiver.counters.rejected.malformed;
      spoof({ parity: MCAST.MAX_PARITY }, dataKey);
      spoof({ stripe: stripes, stripes }, dataKey);
      await until(() => receiver.counters.rejected.malformed >= malformed + 2, 30_000, 'undecodable parity to be dropped', 5);
      expect(receiver.counters.parity).toBe(5); // the five signed ones above got as far as the size checks
      // An insider's signed garbage parity for a real stripe: rebuilt data fails SHA-256, the chunk is asked for again.
      for (let p = 0; p < 32; p++) spoof({ parity: p }, dataKey);
      sender.release();
      const result = await running;
      expect(readFileSync(target).equals(s.disk)).toBe(true);
      expect(result.counters.chunksWritten).toBe(result.chunks);
    } finally {
      sender.stop();
      receiver.stop(new Error('test over'));
      await running.catch(() => undefined);
    }
  }, 120_000);

  it("a member's repair asks for nothing hold no chunk back, and asks for more than a stripe holds send no more than the chunk once", async () => {
    const s = await setup(join(dir, 'asks'));
    const net = new FakeNetwork(11);
    const sender = makeSender(s, net, { proactiveParity: 0 });
    const port = await sender.start();
    const target = join(dir, 'asks-50.img');
    const receiver = makeReceiver(sender, port, s, net, 50, target);
    const running = receiver.run();
    const rogue = new MacKey(sender.receiverKeyFor(60));
    const chunks = tableLength(s.manifest.table);
    let seq = 1;
    const ask = (need: (stripes: number) => Uint8Array) => {
      const repairs = [];
      for (let c = 0; c < chunks; c++) {
        const st = stripeCount(fragmentCount(CHUNK.HEADER_SIZE + chunkAt(s.manifest.table, c).storedLength, F));
        repairs.push({ chunk: c, stripes: st, need: need(st) });
      }
      const status = { session: sender.session, seq: seq++, receiver: 60, state: ReceiverState.RECEIVING, queueFill: 0, done: 0, wanted: chunks, received: 0, lost: 0, windowStart: 0, windowEnd: 0, rttMs: 0, incarnation: 9, ranges: [], repairs };
      net.route(encodeStatus(status, rogue), { address: '10.0.0.60', port: 5555 }, port, SENDER);
    };
    try {
      await until(() => sender.receivers().length === 1, 30_000, 'the receiver to join', 5);
      ask((st) => new Uint8Array(st)); // "I need 0 more packets" of every stripe of every chunk
      await until(() => sender.receivers().length === 2, 30_000, 'the member to be heard', 5);
      sender.release();
      await until(() => receiver.progress().done === receiver.progress().wanted, 30_000, 'every chunk at the honest receiver', 5);
      // Chunk 0 went out whole; now the member asks for 100 more packets of each of its stripes.
      const before = sender.counters.packetsSent;
      const fragments = fragmentCount(CHUNK.HEADER_SIZE + chunkAt(s.manifest.table, 0).storedLength, F);
      await new Promise((r) => setTimeout(r, 100)); // past the guard against asks written before the chunk arrived
      ask((st) => new Uint8Array(st).fill(100));
      await until(() => sender.pendingDemand() === 0 && sender.counters.packetsSent > before, 30_000, 'the asks to be served', 5);
      expect(sender.counters.packetsSent - before).toBeLessThanOrEqual(chunks * fragments);
      await running;
      expect(readFileSync(target).equals(s.disk)).toBe(true);
    } finally {
      sender.stop();
      receiver.stop(new Error('test over'));
      await running.catch(() => undefined);
    }
  }, 120_000);

  it('a peer of protocol version 2 is counted and dropped at both ends, and each says the versions differ', async () => {
    const s = await setup(join(dir, 'version'));
    const net = new FakeNetwork(4);
    const sender = makeSender(s, net);
    const port = await sender.start();
    const senderSaid: string[] = [];
    sender.on('version', (m: string) => senderSaid.push(m));
    const receiver = makeReceiver(sender, port, s, net, 60, join(dir, 'version-60.img'));
    const receiverSaid: string[] = [];
    receiver.on('version', (m: string) => receiverSaid.push(m));
    const running = receiver.run();
    try {
      await until(() => sender.receivers().length === 1, 30_000, 'the receiver to join', 5);
      // An old sender's DATA: the same layout, version byte 2.
      const pkt = Buffer.alloc(MCAST.DATA_HEADER + 10 + MCAST.MAC_SIZE);
      const n = encodeData(pkt, { session: sender.session, seq: 1, chunk: 0, fragment: 0, fragments: 1, storedLength: 10, flags: 0, payload: Buffer.alloc(10) }, new MacKey(sender.dataKey));
      pkt[4] = 2;
      net.route(pkt.subarray(0, n), { address: SENDER, port: 4444 }, 9000, GROUP);
      net.route(pkt.subarray(0, n), { address: SENDER, port: 4444 }, 9000, GROUP);
      await until(() => receiver.counters.rejected.version === 2, 30_000, 'the old DATA to be counted', 5);
      expect(receiverSaid).toEqual(['protocol version mismatch: sender speaks 2, this agent 3; update clonecast on the server and in the boot environment to the same release']);
      // An old receiver's STATUS.
      const st = encodeStatus({ session: sender.session, seq: 1, receiver: 61, state: ReceiverState.RECEIVING, queueFill: 0, done: 0, wanted: 8, received: 0, lost: 0, windowStart: 0, windowEnd: 0, rttMs: 0, incarnation: 1, ranges: [], repairs: [] }, new MacKey(sender.receiverKeyFor(61)));
      st[4] = 2;
      net.route(st, { address: '10.0.0.61', port: 5555 }, port, SENDER);
      await until(() => sender.counters.dropped.version === 1, 30_000, 'the old STATUS to be counted', 5);
      expect(senderSaid).toEqual(['protocol version mismatch: receiver speaks 2, this sender 3; update clonecast on the server and in the boot environment to the same release']);
      expect(sender.receivers().map((r) => r.receiverId)).toEqual([60]);
    } finally {
      sender.stop();
      receiver.stop(new Error('test over'));
      await running.catch(() => undefined);
    }
  }, 60_000);

  it('a receiver that hears only an old sender fails with the version mismatch, not "no word from the sender"', async () => {
    const s = await setup(join(dir, 'old-sender'));
    const net = new FakeNetwork(8);
    const old = net.factory(SENDER)();
    await new Promise<void>((r) => old.bind(0, undefined, r));
    const key = Buffer.alloc(32, 3);
    const receiver = new Receiver({
      session: { session: 77, group: GROUP, port: 9000, sender: { address: SENDER, port: 1 }, fragmentSize: F },
      manifest: s.manifest,
      target: join(dir, 'old-sender.img'),
      receiverId: 70,
      keys: { data: key, receiver: key },
      createSocket: net.factory('10.0.0.70'),
      timeoutMs: 1000,
    });
    const pkt = Buffer.alloc(MCAST.DATA_HEADER + 10 + MCAST.MAC_SIZE);
    encodeData(pkt, { session: 77, seq: 1, chunk: 0, fragment: 0, fragments: 1, storedLength: 10, flags: 0, payload: Buffer.alloc(10) }, new MacKey(key));
    pkt[4] = 2;
    const timer = setInterval(() => old.send(pkt, 9000, GROUP), 20);
    try {
      const err = await receiver.run().catch((e: unknown) => e);
      expect(isError(err, ERR.PROTOCOL_VERSION)).toBe(true);
      expect((err as Error).message).toMatch(/^protocol version mismatch: sender speaks 2, this agent 3/);
      expect(receiver.counters.rejected.version).toBeGreaterThan(0);
    } finally {
      clearInterval(timer);
      old.close();
    }
  }, 60_000);
});
