import { afterAll, beforeAll, describe, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { detachLoops, itNeeds, loopAttach, missing, tempDir } from '../helpers.js';
import { Lab } from '../../server/lab/netns.js';
import { runSession, startReceiver, startSender, type Finished } from './session-runner.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const labs: Lab[] = [];
afterAll(() => {
  for (const lab of labs) lab.down();
  detachLoops();
});

function lab(clients: number, loss?: number | number[], rateMbit?: number, delayMs?: number): Lab {
  const l = Lab.up({ clients, loss, rateMbit, delayMs });
  labs.push(l);
  return l;
}

function expectReceived(r: Finished, disk: string, image: Buffer, what: string): void {
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
  expect(readFileSync(disk).subarray(0, image.length).equals(image), `${what}: disk differs from the image`).toBe(true);
}

describe('multicast sessions in the network-namespace lab', () => {
  const dir = tempDir('mcast');
  const data = join(dir, 'data');
  const raw = join(dir, 'image.raw');
  let image: Buffer;

  beforeAll(async () => {
    if (missing(['netns']).length > 0) return;
    makeImage(raw, 16, { dense: true, seed: 5 });
    image = readFileSync(raw);
    await importImage(Store.open(data), raw, 'lab', {});
  });

  for (const n of [1, 4, 8]) {
    for (const loss of [0, 0.02, 0.1]) {
      itNeeds(['netns', 'loop'], `delivers to ${n} receiver(s) with ${loss * 100}% loss each, every disk identical`, async () => {
        const l = lab(n, loss);
        const plans = l.clients.map((_, k) => {
          const file = join(dir, `n${n}-l${loss}-${k}.img`);
          // N=4 writes to loop devices, the others to files.
          if (n === 4) {
            writeFileSync(file, Buffer.alloc(0));
            execFileSync('truncate', ['-s', `${16 * MiB}`, file]);
            return { k, disk: loopAttach(file), file };
          }
          return { k, disk: file, file };
        });
        const { sender, receivers } = await runSession(l, data, 'lab', plans);
        expect(sender.code, sender.stderr).toBe(0);
        receivers.forEach((r, k) => expectReceived(r, plans[k].file, image, `receiver ${k}`));
        if (loss > 0) {
          expect(receivers.some((r) => r.json.counters.lost > 0)).toBe(true);
          expect(l.droppedTowards(0)).toBeGreaterThan(0);
        }
        expect(sender.json.receivers.map((r: { state: string }) => r.state)).toEqual(Array(n).fill('done'));
        l.down();
      }, 120_000);
    }
  }

  itNeeds(['netns'], 'works across a 25 ms one-way delay with 2% loss, and measures the round trip', async () => {
    const l = lab(2, 0.02, undefined, 25);
    const plans = [0, 1].map((k) => ({ k, disk: join(dir, `delay-${k}.img`) }));
    const { sender, receivers } = await runSession(l, data, 'lab', plans, ['--rate', '40']);
    expect(sender.code, sender.stderr).toBe(0);
    receivers.forEach((r, k) => expectReceived(r, plans[k].disk, image, `receiver ${k}`));
    for (const r of receivers) {
      expect(r.json.rttMs).toBeGreaterThan(45);
      expect(r.json.rttMs).toBeLessThan(200);
      // Its losses were made good by parity: rebuilt from proactive parity, or asked for per stripe.
      expect(r.json.counters.rebuilt + r.json.counters.nacksSent).toBeGreaterThan(0);
    }
    l.down();
  }, 120_000);

  itNeeds(['netns'], 'a receiver that starts 5 s late finishes correctly, and nobody waits for it', async () => {
    const l = lab(3);
    const plans = [0, 1, 2].map((k) => ({ k, disk: join(dir, `late-${k}.img`), delayMs: k === 2 ? 5000 : 0 }));
    // Start 1 s after the first receiver joined, without waiting for all three.
    const { sender, receivers } = await runSession(l, data, 'lab', plans, ['--rate', '12', '--wait', '1']);
    expect(sender.code, sender.stderr).toBe(0);
    receivers.forEach((r, k) => expectReceived(r, plans[k].disk, image, `receiver ${k}`));
    // The late one joined mid-session: the early ones were well on their way and finished first.
    expect(Math.max(receivers[0].endedAt, receivers[1].endedAt)).toBeLessThan(receivers[2].endedAt);
    expect(receivers[0].endedAt).toBeGreaterThan(5000);
    l.down();
  }, 120_000);

  itNeeds(['netns'], 'a receiver killed halfway and restarted finishes correctly without fetching again what it wrote', async () => {
    const l = lab(3);
    const s = await startSender(l, data, 'lab', 3, ['--rate', '12']);
    const disks = [0, 1, 2].map((k) => join(dir, `kill-${k}.img`));
    const steady = [0, 1].map((k) => startReceiver(l, s.url, { k, disk: disks[k] }, s.t0).done);
    const victim = startReceiver(l, s.url, { k: 2, disk: disks[2] }, s.t0);
    await new Promise((r) => setTimeout(r, 2500));
    victim.child.kill('SIGKILL');
    await victim.done;
    const again = await startReceiver(l, s.url, { k: 2, disk: disks[2], extra: ['--resume'] }, s.t0).done;
    const [a, b] = await Promise.all(steady);
    const sender = await s.done;
    expect(sender.code, sender.stderr).toBe(0);
    expectReceived(a, disks[0], image, 'receiver 0');
    expectReceived(b, disks[1], image, 'receiver 1');
    expectReceived(again, disks[2], image, 'restarted receiver');
    expect(again.json.skipped).toBeGreaterThan(0);
    l.down();
  }, 120_000);

  // Structural, not timed (timings belong in the benchmarks): the seven others finish while the
  // throttled one is still far from done, so the sender never waited for it.
  itNeeds(['netns', 'loop', 'blkio'], 'a receiver with a throttled disk does not hold back the other seven', async () => {
    const l = lab(8);
    const plans = l.clients.map((_, k) => ({ k, disk: join(dir, `slow-${k}.img`), shellPrefix: undefined as string | undefined }));
    // Receiver 7 writes to a loop device limited to 1 MiB/s by the blkio controller.
    const file = plans[7].disk;
    execFileSync('truncate', ['-s', `${16 * MiB}`, file]);
    const dev = loopAttach(file);
    const rdev = execFileSync('stat', ['-c', '%t:%T', dev], { encoding: 'utf8' }).trim().split(':').map((h) => parseInt(h, 16)).join(':');
    const cgroup = `/sys/fs/cgroup/blkio/clonecast-${l.tag}`;
    mkdirSync(cgroup);
    writeFileSync(join(cgroup, 'blkio.throttle.write_bps_device'), `${rdev} ${MiB}`);
    plans[7] = { k: 7, disk: dev, shellPrefix: `echo $$ > ${cgroup}/cgroup.procs` };
    const t = await runSession(l, data, 'lab', plans, ['--rate', '40']);
    l.down();
    rmdirSync(cgroup);
    expect(t.sender.code, t.sender.stderr).toBe(0);
    t.receivers.forEach((r, k) => expectReceived(r, k === 7 ? file : plans[k].disk, image, `receiver ${k}`));
    const slowId: number = t.receivers[7].json.receiver;
    const ends: { receiverId: number; state: string; seconds: number; progress: Record<string, number> }[] = t.sender.json.ends;
    const fastEnds = ends.filter((e) => e.receiverId !== slowId);
    expect(fastEnds.map((e) => e.state)).toEqual(Array(7).fill('done'));
    // Where the slow one stood when the last of the seven finished.
    const lastFast = fastEnds[fastEnds.length - 1];
    const slowThen = lastFast.progress[slowId];
    const fast = Math.max(...t.receivers.slice(0, 7).map((r) => r.endedAt));
    console.log(`throttled-disk test: the 7 finished in ${fast.toFixed(0)} ms; the receiver at 1 MiB/s was ${(100 * slowThen).toFixed(0)}% done then and took ${t.receivers[7].endedAt.toFixed(0)} ms`);
    expect(ends[ends.length - 1].receiverId).toBe(slowId); // it finished last
    expect(slowThen).toBeLessThan(0.75);
  }, 240_000);

  itNeeds(['netns'], 'packets injected onto the group from another namespace corrupt nothing', async () => {
    const l = lab(3);
    const s = await startSender(l, data, 'lab', 2, ['--rate', '40']);
    const info = JSON.parse(l.execIn(l.clients[2].ns, process.execPath, ['-e', `fetch('${s.url}session').then((r) => r.text()).then((t) => process.stdout.write(t))`]));
    // The rogue knows the session id and the image's sizes, and floods the group
    // with well-formed DATA packets of random payloads, plus junk.
    const rogue = l.spawnIn(l.clients[2].ns, process.execPath, ['-e', ROGUE, JSON.stringify(info), l.clients[2].address]);
    const disks = [0, 1].map((k) => join(dir, `inject-${k}.img`));
    const rs = await Promise.all([0, 1].map((k) => startReceiver(l, s.url, { k, disk: disks[k] }, s.t0).done));
    rogue.kill();
    const sender = await s.done;
    expect(sender.code, sender.stderr).toBe(0);
    rs.forEach((r, k) => expectReceived(r, disks[k], image, `receiver ${k}`));
    expect(rs[0].json.counters.rejected.foreign).toBeGreaterThan(100);
    expect(sender.json.counters.dropped.malformed + sender.json.counters.dropped.otherSession).toBeGreaterThan(0);
    l.down();
  }, 120_000);
});

// Floods the group (and the sender's unicast port) with forged packets.
const ROGUE = `
const dgram = require('node:dgram');
const crypto = require('node:crypto');
const info = JSON.parse(process.argv[1]);
const s = dgram.createSocket('udp4');
s.bind(0, process.argv[2], () => {
  s.setMulticastInterface(process.argv[2]);
  let seq = 0;
  setInterval(() => {
    for (let i = 0; i < 50; i++) {
      const p = Buffer.alloc(32 + 1000 + 16); // header, payload, a guessed MAC (protocol version 3)
      p.writeUInt32BE(0x43434d43, 0); p[4] = 3; p[5] = 1; p.writeUInt16BE(32, 6);
      p.writeUInt32BE(info.session, 8); p.writeUInt32BE(seq++, 12);
      p.writeUInt32BE(i % 16, 16); p.writeUInt16BE(0, 20); p.writeUInt16BE(1, 22);
      p.writeUInt32BE(1000, 24); p.writeUInt16BE(1000, 28);
      crypto.randomFillSync(p, 32);
      s.send(p, info.port, info.group);
      s.send(crypto.randomBytes(40), info.port, info.group);
      s.send(crypto.randomBytes(60), info.sender.port, info.sender.address);
    }
  }, 5);
});
`;
