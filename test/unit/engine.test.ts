import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { Sender } from '../../server/mcast/sender.js';
import { Receiver, type SessionInfo } from '../../agent/receiver.js';
import { chunkAt } from '../../protocol/manifest.js';
import { ReceiverState } from '../../protocol/mcast.js';
import { FakeNetwork } from './fake-network.js';
import { seeded, tempDir, texty } from '../helpers.js';

const C = 64 << 10;

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
    });
    const senderPort = await sender.start();
    const info: SessionInfo = { session: sender.session, group: '239.77.0.1', port: 9000, sender: { address: '10.0.0.1', port: senderPort }, fragmentSize: 1000 };
    try {
      const results = await Promise.all(
        [11, 12, 13].map((h) =>
          new Receiver({ session: info, manifest, target: join(dir, `out-${h}.img`), createSocket: net.factory(`10.0.0.${h}`), receiverId: h }).run(),
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
});
