import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Sender } from '../../transfer/sender.js';
import { Receiver, type SessionInfo } from '../../transfer/receiver.js';
import { chunkAt } from '../../protocol/manifest.js';
import { decode, DropReason, encodeStatus, PacketType, ReceiverState, type AckPacket, type StatusPacket } from '../../protocol/mcast.js';
import { ClonecastError, isError, ERR } from '../../protocol/errors.js';
import { MacKey } from '../../protocol/mac.js';
import { liveness } from '../../transfer/policy.js';
import { FakeNetwork } from './fake-network.js';
import { seeded, tempDir, texty } from '../helpers.js';

const C = 64 << 10;

/** A receiver's packet keys in a session whose sender admits any holder of its secret. */
function keysOf(sender: Sender, receiverId: number) {
  return { data: sender.dataKey, receiver: sender.receiverKeyFor(receiverId) };
}

/** What receivers need to know about an in-memory session. */
function sessionOf(sender: Sender, port: number, fragmentSize = 1000): SessionInfo {
  return { session: sender.session, group: '239.77.0.1', port: 9000, sender: { address: '10.0.0.1', port }, fragmentSize };
}

/**
 * A hand-driven receiver on host: report() sends a STATUS (defaults for the
 * fields not given) and waits a moment; acks collects the sender's answers.
 */
async function rawPeer(net: FakeNetwork, host: string, sender: Sender, port: number) {
  const sock = net.factory(host)();
  const acks: AckPacket[] = [];
  sock.on('message', (m) => {
    const p = decode(m);
    if (p?.type === PacketType.ACK) acks.push(p);
  });
  await new Promise<void>((r) => sock.bind(9000, undefined, r));
  const base = { session: sender.session, receiver: 50, state: ReceiverState.RECEIVING, queueFill: 0, done: 0, wanted: 10, received: 0, lost: 0, windowStart: 0, windowEnd: 23, rttMs: 0, incarnation: 1, ranges: [], repairs: [] };
  const report = async (fields: Partial<Omit<StatusPacket, 'type'>> & { seq: number }) => {
    const status = { ...base, ...fields };
    sock.send(encodeStatus(status, new MacKey(sender.receiverKeyFor(status.receiver))), port, '10.0.0.1');
    await new Promise((r) => setTimeout(r, 10));
  };
  return { acks, report, close: () => sock.close() };
}

async function setup(dir: string) {
  const store = Store.open(join(dir, 'data'));
  const src = join(dir, 'disk.img');
  const disk = Buffer.concat([seeded(5 * C + 100, 1), Buffer.alloc(6 * C), texty(9 * C, 2), seeded(3 * C + 7, 3)]);
  writeFileSync(src, disk);
  await importImage(store, src, 'eng', { chunkSize: C, workers: 1 });
  const { name, version } = store.resolve(parseRef('eng'));
  const manifest = await store.readManifest(name, version);
  return { store, manifest, disk };
}

describe('transfer engine over a faulty in-memory network', () => {
  const dir = tempDir('engine');

  it('delivers an image to three receivers despite loss, duplicates and reordering', async () => {
    const { store, manifest, disk } = await setup(dir);
    const net = new FakeNetwork(7);
    net.faults.set('10.0.0.11', { loss: 0.05 });
    net.faults.set('10.0.0.12', { loss: 0.2, duplicate: 0.1, reorder: 0.1 });
    net.faults.set('10.0.0.13', { duplicate: 0.3, reorder: 0.3 });
    net.faults.set('10.0.0.1', { loss: 0.1 }); // reports and NACKs get lost too
    const sender = new Sender({
      manifest,
      loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
      group: '239.77.0.1',
      port: 9000,
      address: '10.0.0.1',
      rateMbit: 200,
      fragmentSize: 1000,
      createSocket: net.factory('10.0.0.1'),
      openAdmission: true,
    });
    const senderPort = await sender.start();
    const info = sessionOf(sender, senderPort);
    try {
      const results = await Promise.all(
        [11, 12, 13].map((h) =>
          new Receiver({ session: info, manifest, target: join(dir, `out-${h}.img`), createSocket: net.factory(`10.0.0.${h}`), receiverId: h, keys: keysOf(sender, h) }).run(),
        ),
      );
      for (const h of [11, 12, 13]) expect(readFileSync(join(dir, `out-${h}.img`)).equals(disk), `receiver ${h}`).toBe(true);
      expect(results.every((r) => r.verified)).toBe(true);
      expect(results[1].counters.lost).toBeGreaterThan(0);
      expect(results[2].counters.duplicates).toBeGreaterThan(0);
      expect(sender.counters.repairPackets).toBeGreaterThan(0);
      const states = sender.receivers().map((r) => r.state);
      expect(states).toEqual([ReceiverState.DONE, ReceiverState.DONE, ReceiverState.DONE]);
    } finally {
      sender.stop();
    }
  }, 60_000);

  function makeSender(store: Store, manifest: Awaited<ReturnType<typeof setup>>['manifest'], net: FakeNetwork, extra: Partial<ConstructorParameters<typeof Sender>[0]> = {}) {
    return new Sender({
      manifest,
      loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
      group: '239.77.0.1',
      port: 9000,
      address: '10.0.0.1',
      rateMbit: 100,
      fragmentSize: 1000,
      createSocket: net.factory('10.0.0.1'),
      openAdmission: true,
      ...extra,
    });
  }

  it('applies only the newest report of a receiver and answers stale ones unchanged', async () => {
    const { store, manifest } = await setup(join(dir, 'stale'));
    const net = new FakeNetwork(3);
    const sender = makeSender(store, manifest, net, { rateMbit: 1 });
    const port = await sender.start();
    const peer = await rawPeer(net, '10.0.0.50', sender, port);
    try {
      await peer.report({ seq: 5, ranges: [{ first: 0, count: 5 }] });
      const after5 = sender.pendingDemand();
      await peer.report({ seq: 4, ranges: [{ first: 0, count: 23 }] }); // older: must not add needs
      expect(sender.pendingDemand()).toBeLessThanOrEqual(after5);
      expect(peer.acks.map((a) => a.echo)).toEqual([5, 4]);
      await peer.report({ seq: 6 }); // newer: needs nothing
      expect(sender.pendingDemand()).toBe(0);
    } finally {
      sender.stop();
      peer.close();
    }
  });

  it('takes back a dropped receiver that restarts, even though its reports are numbered from scratch', async () => {
    const { store, manifest } = await setup(join(dir, 'restart'));
    const net = new FakeNetwork(4);
    const sender = makeSender(store, manifest, net, { rateMbit: 1 });
    const port = await sender.start();
    const peer = await rawPeer(net, '10.0.0.60', sender, port);
    const all = [{ first: 0, count: 23 }];
    const lastState = () => peer.acks[peer.acks.length - 1].state;
    try {
      for (let seq = 0; seq < 5; seq++) await peer.report({ seq, incarnation: 1, ranges: all });
      expect(sender.drop(50, DropReason.NO_PROGRESS)).toBe(true); // the policy gave it up
      await new Promise((r) => setTimeout(r, 10));
      expect(lastState()).toBe(ReceiverState.DROPPED); // told at once
      expect(peer.acks[peer.acks.length - 1].reason).toBe(DropReason.NO_PROGRESS);
      expect(sender.pendingDemand()).toBe(0);
      await peer.report({ seq: 41, incarnation: 1, ranges: all }); // the same run: still dropped
      expect(lastState()).toBe(ReceiverState.DROPPED);
      await peer.report({ seq: 0, incarnation: 2, ranges: all }); // a restart: sequence 0, new incarnation
      expect(lastState()).toBe(ReceiverState.RECEIVING);
      expect(sender.pendingDemand()).toBeGreaterThan(0);
    } finally {
      sender.stop();
      peer.close();
    }
  });

  it('drops, by the liveness rule, a receiver that stops making progress and finishes the others', async () => {
    const { store, manifest, disk } = await setup(join(dir, 'drop'));
    const net = new FakeNetwork(5);
    net.faults.set('10.0.0.21', { loss: 1 }); // hears nothing at all
    const sender = makeSender(store, manifest, net);
    const port = await sender.start();
    const info = sessionOf(sender, port);
    const dropped = new Promise<{ receiverId: number; reason: DropReason }>((resolve) => sender.on('drop', resolve));
    // The caller's policy: what clonecast send and the server's sessions run.
    const policy = setInterval(() => {
      for (const r of sender.receivers()) {
        const reason = liveness(r, performance.now(), 1500); // long enough that a stalled machine never drops the healthy one
        if (reason !== null) sender.drop(r.receiverId, reason);
      }
    }, 50);
    try {
      const deaf = new Receiver({ session: info, manifest, target: join(dir, 'deaf.img'), createSocket: net.factory('10.0.0.21'), receiverId: 21, keys: keysOf(sender, 21), timeoutMs: 5000 });
      const deafRun = deaf.run().catch((e: Error) => e);
      const ok = await new Receiver({ session: info, manifest, target: join(dir, 'ok.img'), createSocket: net.factory('10.0.0.22'), receiverId: 22, keys: keysOf(sender, 22) }).run();
      expect(ok.verified).toBe(true);
      expect(readFileSync(join(dir, 'ok.img')).equals(disk)).toBe(true);
      expect(await dropped).toMatchObject({ receiverId: 21, reason: DropReason.NO_PROGRESS });
      const err = await deafRun;
      // It hears nothing, the drop included: it gives up on the silent sender.
      expect(isError(err, ERR.NOT_FOUND) || isError(err, ERR.DROPPED)).toBe(true);
    } finally {
      clearInterval(policy);
      sender.stop();
    }
  }, 30_000);

  it('keeps a slow disk from holding back a fast one (the slow one pauses its requests)', async () => {
    const { store, manifest, disk } = await setup(join(dir, 'slow'));
    const net = new FakeNetwork(9);
    const sender = makeSender(store, manifest, net, { rateMbit: 50 });
    const port = await sender.start();
    const info = sessionOf(sender, port);
    try {
      // Structural, not timed: when the fast receiver has finished, the slow one is still far from done.
      const make = (h: number, writeLimit?: number) =>
        new Receiver({ session: info, manifest, target: join(dir, `s${h}.img`), createSocket: net.factory(`10.0.0.${h}`), receiverId: h, keys: keysOf(sender, h), writeLimit, queueChunks: 2 });
      const fast = make(31);
      const slow = make(32, 256 << 10);
      let slowWhenFastEnded = 1;
      await Promise.all([
        fast.run().then((r) => {
          const p = slow.progress();
          slowWhenFastEnded = p.done / Math.max(1, p.wanted);
          return r;
        }),
        slow.run(),
      ]);
      expect(readFileSync(join(dir, 's31.img')).equals(disk)).toBe(true);
      expect(readFileSync(join(dir, 's32.img')).equals(disk)).toBe(true);
      expect(slowWhenFastEnded).toBeLessThan(0.5);
    } finally {
      sender.stop();
    }
  }, 30_000);

  it('serves a single receiver by unicast, and the group once a second one joins', async () => {
    const { store, manifest, disk } = await setup(join(dir, 'uni'));
    const net = new FakeNetwork(11);
    const sender = makeSender(store, manifest, net, { rateMbit: 20 });
    const port = await sender.start();
    const info = sessionOf(sender, port);
    try {
      await new Receiver({ session: info, manifest, target: join(dir, 'u1.img'), createSocket: net.factory('10.0.0.41'), receiverId: 41, keys: keysOf(sender, 41) }).run();
      expect(readFileSync(join(dir, 'u1.img')).equals(disk)).toBe(true);
      expect(sender.counters.unicastPackets).toBe(sender.counters.packetsSent);
      const before = sender.counters.packetsSent;
      await Promise.all([42, 43].map((h) => new Receiver({ session: info, manifest, target: join(dir, `u${h}.img`), createSocket: net.factory(`10.0.0.${h}`), receiverId: h, keys: keysOf(sender, h) }).run()));
      expect(readFileSync(join(dir, 'u42.img')).equals(disk)).toBe(true);
      expect(sender.counters.packetsSent - before).toBeGreaterThan(sender.counters.unicastPackets - before);
    } finally {
      sender.stop();
    }
  }, 30_000);

  it('cancel during verify leaves the receiver\'s promise settled and nothing unhandled', async () => {
    const { store, manifest } = await setup(join(dir, 'cancel-verify'));
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    const onUncaught = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    process.on('uncaughtException', onUncaught);
    try {
      // Stopped as verifying begins, and from the handler of the last write (the writer then
      // finds everything written just as the run ends): either way the socket and disk close under it.
      for (const when of ['verifying', 'last-write'] as const) {
        const net = new FakeNetwork(13);
        const sender = makeSender(store, manifest, net, { rateMbit: 50 });
        const port = await sender.start();
        try {
          const receiver = new Receiver({ session: sessionOf(sender, port), manifest, target: join(dir, `cv-${when}.img`), createSocket: net.factory('10.0.0.51'), receiverId: 51, keys: keysOf(sender, 51) });
          const cancel = () => receiver.stop(new ClonecastError(ERR.CANCELLED, 'cancelled: by the test'));
          if (when === 'verifying') receiver.once('verifying', cancel);
          else receiver.on('progress', (p: { done: number; wanted: number }) => p.done === p.wanted && cancel());
          const outcome = await receiver.run().then(
            () => 'resolved',
            (err: unknown) => err,
          );
          expect(isError(outcome, ERR.CANCELLED), `${when}: ${String(outcome)}`).toBe(true);
          // Timers, a read-back in progress and the last reports would fire within this.
          await new Promise((r) => setTimeout(r, 400));
        } finally {
          sender.stop();
        }
      }
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      process.off('uncaughtException', onUncaught);
    }
  }, 30_000);

  it('a receiver the sender drops rejects with a typed reason, not a message to match', async () => {
    const { store, manifest } = await setup(join(dir, 'typed-drop'));
    const net = new FakeNetwork(17);
    const sender = makeSender(store, manifest, net, { rateMbit: 0.2, hold: true }); // holds: it sends nothing
    const port = await sender.start();
    try {
      const receiver = new Receiver({ session: sessionOf(sender, port), manifest, target: join(dir, 'td.img'), createSocket: net.factory('10.0.0.52'), receiverId: 52, keys: keysOf(sender, 52) });
      const run = receiver.run().catch((e: unknown) => e);
      const joined = await new Promise<{ receiverId: number }>((r) => sender.once('join', r));
      expect(joined.receiverId).toBe(52);
      expect(sender.drop(52, DropReason.SILENT)).toBe(true);
      const err = await run;
      expect(isError(err, ERR.DROPPED)).toBe(true);
      expect((err as ClonecastError).details.dropped).toBe(DropReason.SILENT);
      expect(sender.receivers()[0]).toMatchObject({ receiverId: 52, state: ReceiverState.DROPPED, reason: DropReason.SILENT });
      // A session that ends because of the drop stops the sender from inside the 'drop' listener.
      const again = new Receiver({ session: sessionOf(sender, port), manifest, target: join(dir, 'td2.img'), createSocket: net.factory('10.0.0.53'), receiverId: 53, keys: keysOf(sender, 53) });
      const run2 = again.run().catch((e: unknown) => e);
      await new Promise((r) => sender.once('join', r));
      sender.once('drop', () => sender.stop());
      expect(() => sender.drop(53, DropReason.NO_PROGRESS)).not.toThrow();
      again.stop(new ClonecastError(ERR.CANCELLED, 'cancelled: by the test'));
      expect(isError(await run2, ERR.CANCELLED) || isError(await run2, ERR.DROPPED)).toBe(true);
    } finally {
      sender.stop();
    }
  }, 30_000);
});
