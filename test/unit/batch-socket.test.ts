import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { chunkAt } from '../../protocol/manifest.js';
import { Sender } from '../../transfer/sender.js';
import { Receiver } from '../../transfer/receiver.js';
import { createUdpSocket } from '../../transfer/udp.js';
import { native } from '../../native/addon.js';
import { MacKey } from '../../protocol/mac.js';
import { BatchStatus, type DatagramBatch, type RemoteInfo, type UdpSocket } from '../../protocol/transport.js';
import { BATCH_SLOT, BatchSocket, eachDatagram, ipv4ToNumber, numberToIpv4 } from '../../transfer/batch-socket.js';
import { Outbox } from '../../transfer/outbox.js';
import { itNeeds, ROOT, seeded, tempDir, texty } from '../helpers.js';

const open: BatchSocket[] = [];
afterEach(() => {
  for (const s of open.splice(0)) {
    try {
      s.close();
    } catch {
      // closed by the test
    }
  }
});

async function bound(port = 0): Promise<BatchSocket> {
  const s = new BatchSocket(native());
  open.push(s);
  await new Promise<void>((resolve) => s.bind(port, '127.0.0.1', resolve));
  return s;
}

/** Collects batches (copied: the socket reuses its buffers) until n datagrams have arrived. */
function collect(s: BatchSocket, n: number, verify?: { key: Uint8Array; types: number[] }) {
  const batches: { msgs: Buffer[]; meta: number[][] }[] = [];
  let got = 0;
  let done: () => void;
  const all = new Promise<void>((r) => (done = r));
  s.onBatch((b: DatagramBatch) => {
    const msgs: Buffer[] = [];
    const meta: number[][] = [];
    for (let i = 0; i < b.count; i++) {
      msgs.push(Buffer.from(b.data.subarray(i * b.slotSize, i * b.slotSize + b.meta[4 * i])));
      meta.push([...b.meta.subarray(4 * i, 4 * i + 4)]);
    }
    batches.push({ msgs, meta });
    got += b.count;
    if (got >= n) done();
  }, verify);
  return { batches, all };
}

/** A packet of the multicast protocol's shape: type byte at offset 5, a MAC at the end. */
function packet(type: number, length: number, fill: number): Buffer {
  const p = Buffer.alloc(length, fill);
  p.writeUInt32BE(0x43434d43, 0);
  p[4] = 2;
  p[5] = type;
  return p;
}

describe('batched UDP socket (native/src/udp_batch.c)', () => {
  it('converts IPv4 addresses both ways and refuses what is not one', () => {
    expect(ipv4ToNumber('10.77.0.1')).toBe(0x0a4d0001);
    expect(numberToIpv4(0xef4d0001)).toBe('239.77.0.1');
    expect(ipv4ToNumber('256.1.1.1')).toBeNaN();
    expect(ipv4ToNumber('1.2.3')).toBeNaN();
  });

  it('sends a batch in one call and receives it as one batch with the right lengths, sources and bytes', async () => {
    // Receiver bound before the sender's packets exist, so that its first read sees all of them.
    const rx = await bound();
    const { batches, all } = collect(rx, 45);
    const tx = await bound();
    const sizes = [...Array(40).fill(1472), 700, 1472, 1472, 100, 1472];
    const ring = Buffer.alloc(sizes.reduce((a, b) => a + b, 0));
    const meta = new Uint32Array(4 * sizes.length);
    let off = 0;
    sizes.forEach((len, i) => {
      ring.fill(i + 1, off, off + len);
      meta.set([off, len, ipv4ToNumber('127.0.0.1'), rx.address().port], 4 * i);
      off += len;
    });
    expect(tx.sendBatch(ring, meta, sizes.length, null)).toBe(sizes.length);
    await all;
    const msgs = batches.flatMap((b) => b.msgs);
    expect(msgs.map((m) => m.length)).toEqual(sizes);
    msgs.forEach((m, i) => expect(m.equals(Buffer.alloc(sizes[i], i + 1))).toBe(true));
    for (const b of batches) for (const m of b.meta) expect([numberToIpv4(m[1]), m[2]]).toEqual(['127.0.0.1', tx.address().port]);
    // All 45 were in the socket before its first read: one batch, not 45 events.
    expect(batches.length).toBe(1);
    // Runs of equal packets went as UDP GSO sends, and the kernel cut them at the right places.
    expect(tx.gso).toBe(true);
  });

  it('signs a batch in the send call and checks MACs in the receive pass: good, bad and unchecked types apart', async () => {
    const key = Buffer.alloc(32, 7);
    const rx = await bound();
    const { batches, all } = collect(rx, 4, { key, types: [1] });
    const tx = await bound();
    const ring = Buffer.concat([packet(1, 200, 1), packet(1, 300, 2)]);
    const meta = new Uint32Array([0, 200, ipv4ToNumber('127.0.0.1'), rx.address().port, 200, 300, ipv4ToNumber('127.0.0.1'), rx.address().port]);
    expect(tx.sendBatch(ring, meta, 2, key)).toBe(2);
    const forged = packet(1, 200, 3); // type 1 with a MAC of zeros
    tx.send(forged, rx.address().port, '127.0.0.1');
    const other = packet(2, 120, 4); // type 2 is not checked here
    tx.send(other, rx.address().port, '127.0.0.1');
    await all;
    const verdicts = batches.flatMap((b) => b.meta.map((m) => m[3]));
    expect(verdicts).toEqual([BatchStatus.MAC_OK, BatchStatus.MAC_OK, BatchStatus.MAC_BAD, BatchStatus.UNCHECKED]);
    // The signature is the protocol's MAC (protocol/mac.ts), as a receiver without batching checks it.
    const first = batches[0].msgs[0];
    expect(new MacKey(key).verify(first)).toBe(true);
  });

  it('drops an oversized datagram in a batch and passes the others on intact', async () => {
    const rx = await bound();
    const { batches, all } = collect(rx, 3);
    const tx = await bound();
    tx.send(Buffer.alloc(500, 1), rx.address().port, '127.0.0.1');
    tx.send(Buffer.alloc(BATCH_SLOT + 800, 2), rx.address().port, '127.0.0.1');
    tx.send(Buffer.alloc(600, 3), rx.address().port, '127.0.0.1');
    await all;
    const batch = batches.flatMap((b) => b.meta.map((m, i) => ({ m, msg: b.msgs[i] })));
    expect(batch.map((x) => x.m[3])).toEqual([BatchStatus.UNCHECKED, BatchStatus.TRUNCATED, BatchStatus.UNCHECKED]);
    // What the engine sees: the two good ones, whole; the long one counted.
    const data = Buffer.alloc(3 * BATCH_SLOT);
    const m = new Uint32Array(12);
    batch.forEach((x, i) => {
      x.msg.copy(data, i * BATCH_SLOT);
      m.set(x.m, 4 * i);
    });
    const seen: Buffer[] = [];
    let dropped = 0;
    eachDatagram({ count: 3, data, slotSize: BATCH_SLOT, meta: m }, (msg: Buffer, _r: RemoteInfo) => seen.push(Buffer.from(msg)), () => dropped++);
    expect(dropped).toBe(1);
    expect(seen.map((b) => [b.length, b[0]])).toEqual([[500, 1], [600, 3]]);
  });

  it('emits message events with their own copies when nobody asks for batches', async () => {
    const rx = await bound();
    const got: Buffer[] = [];
    const both = new Promise<void>((r) => rx.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
      expect(rinfo.address).toBe('127.0.0.1');
      got.push(msg);
      if (got.length === 2) r();
    }));
    const tx = await bound();
    tx.send(Buffer.alloc(50, 1), rx.address().port, '127.0.0.1');
    tx.send(Buffer.alloc(60, 2), rx.address().port, '127.0.0.1');
    await both;
    expect(got.map((b) => [b.length, b[0]])).toEqual([[50, 1], [60, 2]]);
    // A later datagram lands in the same receive slot; the ones handed out keep their bytes.
    const third = new Promise<void>((r) => rx.once('message', () => r()));
    tx.send(Buffer.alloc(70, 9), rx.address().port, '127.0.0.1');
    await third;
    expect(got.slice(0, 2).map((b) => [b.length, b[0], b[b.length - 1]])).toEqual([[50, 1, 1], [60, 2, 2]]);
  });

  it('reports a bind to an address this host does not have as an error event', async () => {
    const s = new BatchSocket(native());
    open.push(s);
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      s.on('error', resolve);
      s.bind(0, '192.0.2.77', () => resolve(new Error('bound') as NodeJS.ErrnoException));
    });
    expect(err.code).toBe('EADDRNOTAVAIL');
  });

  itNeeds(['netns'], 'counts a partial batch when the socket queue fills (EAGAIN) and sends the rest of nothing', async () => {
    // A veth interface behind a 1 mbit tbf queue in a namespace of its own: the first
    // packets take the small send buffer and the rest of the batch finds it full.
    const ns = `ccbatch${process.pid}`;
    const sh = (cmd: string) => spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
    try {
      expect(sh(`ip netns add ${ns} && ip -n ${ns} link add v0 type veth peer name v1 && ip -n ${ns} addr add 10.77.250.1/24 dev v0 && ip -n ${ns} link set v0 up && ip -n ${ns} link set v1 up && ip -n ${ns} neigh add 10.77.250.2 lladdr 02:00:00:00:00:02 dev v0 && ip netns exec ${ns} tc qdisc add dev v0 root tbf rate 1mbit burst 4k latency 5s`).status).toBe(0);
      const script = `
        import { native } from ${JSON.stringify(join(ROOT, 'dist', 'native', 'addon.js'))};
        import { BatchSocket, ipv4ToNumber } from ${JSON.stringify(join(ROOT, 'dist', 'transfer', 'batch-socket.js'))};
        const s = new BatchSocket(native());
        s.bind(0, '10.77.250.1', () => {
          s.setSendBufferSize(4096);
          const n = 200, len = 1400;
          const meta = new Uint32Array(4 * n);
          for (let i = 0; i < n; i++) meta.set([i * len, len, ipv4ToNumber('10.77.250.2'), 9], 4 * i);
          const sent = s.sendBatch(Buffer.alloc(n * len), meta, n, null);
          process.stdout.write(JSON.stringify({ n, sent }));
          s.close();
        });`;
      const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      const { n, sent } = JSON.parse(r.stdout);
      expect(sent).toBeGreaterThan(0);
      expect(sent).toBeLessThan(n);
    } finally {
      sh(`ip netns del ${ns}`);
    }
  }, 60_000);
});

describe('the sender outbox (transfer/outbox.ts)', () => {
  /** A socket that takes batches and refuses all but `accept` packets of each. */
  function batchingSocket(accept: number) {
    const calls: { count: number; signed: boolean }[] = [];
    const s = Object.assign(new EventEmitter(), {
      send: () => undefined,
      sendBatch: (_p: Buffer, _m: Uint32Array, count: number, key: Uint8Array | null) => {
        calls.push({ count, signed: key !== null });
        return Math.min(count, accept);
      },
    });
    return { socket: s as unknown as UdpSocket, calls };
  }

  it('sends a tick in one batch, signed in the call, and reports refused packets to the rate rule', () => {
    const { socket, calls } = batchingSocket(3);
    const refused: number[] = [];
    const key = Buffer.alloc(32, 1);
    const box = new Outbox(socket, 1472, { mac: new MacKey(key), raw: key }, (n) => refused.push(n));
    for (let i = 0; i < 5; i++) {
      box.slot().fill(i);
      box.commit(1472, 9000, '239.77.0.1');
    }
    box.flush();
    box.flush(); // nothing queued: no call
    expect(calls).toEqual([{ count: 5, signed: true }]);
    expect(refused).toEqual([2]);
    expect([box.sent, box.refused]).toEqual([3, 2]);
  });

  it('without batching signs each packet and sends it in its own buffer', async () => {
    const sent: Buffer[] = [];
    const socket = Object.assign(new EventEmitter(), {
      send: (msg: Buffer, _port: number, _address: string, cb?: (err: Error | null) => void) => {
        const k = sent.push(msg);
        process.nextTick(() => cb?.(k === 2 ? new Error('ENOBUFS') : null));
      },
    }) as unknown as UdpSocket;
    const refused: number[] = [];
    const key = Buffer.alloc(32, 2);
    const box = new Outbox(socket, 1472, { mac: new MacKey(key), raw: key }, (n) => refused.push(n));
    for (let i = 0; i < 3; i++) {
      box.slot().fill(i + 1);
      box.commit(100 + i, 9000, '239.77.0.1');
    }
    box.flush();
    await new Promise((r) => setImmediate(r));
    expect(sent.map((b) => b.length)).toEqual([100, 101, 102]);
    // Each kept its own bytes after the next was encoded (dgram sends later than it is called).
    expect(sent.map((b) => b[0])).toEqual([1, 2, 3]);
    for (const b of sent) expect(new MacKey(key).verify(b)).toBe(true);
    expect(refused).toEqual([1]);
  });
});

describe('the engine on batched sockets', () => {
  it('delivers an image over loopback: a sole receiver served by unicast, every DATA packet batched and its MAC checked in C', async () => {
    const dir = tempDir('batch-engine');
    const C = 64 << 10;
    const store = Store.open(join(dir, 'data'));
    const disk = Buffer.concat([seeded(5 * C + 100, 1), Buffer.alloc(3 * C), texty(6 * C, 2), seeded(2 * C + 7, 3)]);
    writeFileSync(join(dir, 'disk.img'), disk);
    await importImage(store, join(dir, 'disk.img'), 'eng', { chunkSize: C, workers: 1 });
    const { name, version } = store.resolve(parseRef('eng'));
    const manifest = await store.readManifest(name, version);
    const sockets: UdpSocket[] = [];
    let checkedInC = 0;
    const made = () => {
      const s = createUdpSocket();
      sockets.push(s);
      // Count the datagrams whose MAC the socket found good before the engine saw them.
      const onBatch = s.onBatch?.bind(s);
      if (onBatch !== undefined) {
        s.onBatch = (listener, verify) => onBatch((b) => {
          for (let i = 0; i < b.count; i++) if (b.meta[4 * i + 3] === BatchStatus.MAC_OK) checkedInC++;
          listener(b);
        }, verify);
      }
      return s;
    };
    const sender = new Sender({
      manifest,
      loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
      group: '239.77.0.1',
      port: 0,
      address: '127.0.0.1',
      rateMbit: 200,
      fragmentSize: 1400,
      createSocket: made,
      openAdmission: true,
    });
    const port = await sender.start();
    try {
      const receiver = new Receiver({
        session: { session: sender.session, group: '239.77.0.1', port: 0, sender: { address: '127.0.0.1', port }, fragmentSize: 1400 },
        manifest,
        target: join(dir, 'out.img'),
        createSocket: made,
        receiverId: 7,
        keys: { data: sender.dataKey, receiver: sender.receiverKeyFor(7) },
        interfaceAddress: '127.0.0.1',
        unicast: true,
      });
      const result = await receiver.run();
      expect(readFileSync(join(dir, 'out.img')).equals(disk)).toBe(true);
      expect(result.verified).toBe(true);
      expect(sockets.every((s) => s instanceof BatchSocket)).toBe(true);
      expect(sender.counters.unicastPackets).toBeGreaterThan(0);
      expect(result.counters.rejected.badMac).toBe(0);
      expect(result.counters.packets).toBeGreaterThan(0);
      expect(checkedInC).toBe(result.counters.packets);
    } finally {
      sender.stop();
    }
  }, 60_000);
});
