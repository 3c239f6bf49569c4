/**
 * The data path attacked from an attacker namespace, through the kernel
 * (issue 12, items 2 and 5): `clonecast send` in the server namespace, a
 * `clonecast receive` victim, an attacker sending raw IPv4 with forged source
 * addresses (test/lab/tools/spoof.py), and a bystander that must receive
 * nothing. The deterministic versions of each attack, and those that need the
 * server's admission, are in test/unit/datapath-attacks.test.ts.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { CHUNK, Compression, writeChunkHeader } from '../../protocol/chunk.js';
import { chunkAt, tableLength } from '../../protocol/manifest.js';
import { deriveKey, MacKey } from '../../protocol/mac.js';
import { encodeData, encodeStatus, MCAST, ReceiverState } from '../../protocol/mcast.js';
import { Lab } from '../../server/lab/netns.js';
import { itNeeds, missing, seeded, tempDir } from '../helpers.js';
import { forgeXxh64 } from '../xxh64-forge.js';
import { keyFileOf, startReceiver, startSender } from './session-runner.js';

const SPOOF = resolve(import.meta.dirname, 'tools', 'spoof.py');
const labs: Lab[] = [];
afterAll(() => {
  for (const lab of labs) lab.down();
});

describe('the data path attacked from a namespace on the same LAN', () => {
  const dir = tempDir('dp-lab');
  const data = join(dir, 'data');
  const raw = join(dir, 'image.raw');
  let image: Buffer;

  beforeAll(async () => {
    if (missing(['netns']).length > 0) return;
    // 3 MiB and 107 bytes: the last chunk is 107 random bytes, stored raw, that the attacker forges.
    image = seeded(3 * (1 << 20) + 107, 21);
    writeFileSync(raw, image);
    await importImage(Store.open(data), raw, 'atk', {});
  });

  itNeeds(['netns'], 'spoofed forged chunks, a STATUS flood and unicast-flag reports: the victim ends verified with the real bytes, the bystander gets nothing', async () => {
    const lab = Lab.up({ clients: 3, tag: `dpa${randomBytes(2).toString('hex')}` });
    labs.push(lab);
    const [, attacker, bystander] = lab.clients;
    const manifest = await Store.open(data).readManifest('atk', 1);
    // A slow session: the forgeries are in flight long before the real last chunk.
    const sender = await startSender(lab, data, 'atk', 1, ['--rate', '8']);
    const session = JSON.parse(execFileSync('ip', ['netns', 'exec', attacker.ns, process.execPath, '-e', `fetch(${JSON.stringify(`${sender.url}session`)}).then((r) => r.text()).then((t) => process.stdout.write(t))`], { encoding: 'utf8' }));

    // The forgery: other bytes of the last chunk's length with its xxh64, stored raw like it.
    const last = tableLength(manifest.table) - 1;
    const rec = chunkAt(manifest.table, last);
    const real = image.subarray(last * manifest.meta.chunkSize);
    expect(rec.storedLength).toBe(real.length);
    const forged = forgeXxh64(Buffer.alloc(real.length, 0x42), rec.xxh64);
    const stored = Buffer.alloc(CHUNK.HEADER_SIZE + forged.length);
    writeChunkHeader(stored, { compression: Compression.RAW, rawLength: forged.length, payloadLength: forged.length, xxh64: rec.xxh64 });
    forged.copy(stored, CHUNK.HEADER_SIZE);
    const dataPacket = (key: MacKey | null) => {
      const pkt = Buffer.alloc(MCAST.DATA_HEADER + stored.length + MCAST.MAC_SIZE);
      const n = encodeData(pkt, { session: session.session, seq: 1, chunk: last, fragment: 0, fragments: 1, storedLength: stored.length, flags: 0, payload: stored }, key);
      return pkt.subarray(0, n).toString('hex');
    };
    // The insider: it holds the key file, as every receiver of a `send` session does.
    const dataKey = new MacKey(deriveKey(Buffer.from(readFileSync(keyFileOf(sender.url)!, 'utf8').trim(), 'hex'), 'data'));
    const packets = [
      { src: lab.server.address, sport: 4444, dst: session.group, dport: session.port, hex: dataPacket(null) },
      { src: lab.server.address, sport: session.sender.port, dst: session.group, dport: session.port, hex: dataPacket(dataKey) },
      // Reports with the unicast flag, "from" the bystander, for ids nobody was given, with guessed MACs.
      ...Array.from({ length: 200 }, (_, i) => ({
        src: bystander.address,
        sport: 7777,
        dst: lab.server.address,
        dport: session.sender.port,
        hex: encodeStatus({ session: session.session, seq: 1, receiver: 0x5000 + i, state: ReceiverState.RECEIVING, unicast: true, queueFill: 0, done: 0, wanted: 4, received: 10, lost: 5000, windowStart: 0, windowEnd: 4, rttMs: 0, incarnation: 1, ranges: [{ first: 0, count: 4 }], repairs: [] }, new MacKey(randomBytes(32))).toString('hex'),
      })),
    ];
    const file = join(dir, 'packets.json');
    writeFileSync(file, JSON.stringify(packets));
    // The bystander counts what reaches its port 7777.
    const listener = lab.spawnIn(bystander.ns, process.execPath, ['-e', "const s=require('dgram').createSocket('udp4');let n=0;s.on('message',()=>n++);s.bind(7777,()=>process.stdout.write('ready\\n'));process.on('SIGTERM',()=>{process.stdout.write('count '+n+'\\n');process.exit(0)})"]);
    let heard = '';
    listener.stdout!.on('data', (d) => (heard += d));
    await new Promise<void>((r) => listener.stdout!.on('data', () => heard.includes('ready') && r()));
    const spoofer = lab.spawnIn(attacker.ns, '/usr/bin/python3', [SPOOF, file, '400', '10']);
    let spoofed = '';
    spoofer.stdout!.on('data', (d) => (spoofed += d));
    const target = join(dir, 'victim.img');
    const rx = startReceiver(lab, sender.url, { k: 0, disk: target, extra: [] }, sender.t0);
    const [got, sent] = await Promise.all([rx.done, sender.done]);
    spoofer.kill('SIGKILL');
    listener.kill('SIGTERM');
    await new Promise((r) => listener.on('close', r));
    expect(got.code, got.stderr).toBe(0);
    expect(readFileSync(target).subarray(0, image.length).equals(image)).toBe(true);
    expect(got.json.verified).toBe(true);
    // Both forgeries reached the victim and were refused: unsigned by its MAC, signed by SHA-256.
    expect(got.json.counters.rejected.badMac).toBeGreaterThan(0);
    expect(got.json.counters.rejected.badChunk).toBeGreaterThan(0);
    expect(got.json.counters.chunksWritten).toBe(got.json.chunks);
    // The flood made no peer, and nothing went to the bystander.
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.json.receivers.length).toBe(1);
    expect(sent.json.counters.dropped.badMac).toBeGreaterThan(100);
    expect(/count (\d+)/.exec(heard)?.[1]).toBe('0');
    console.log(`attacker: ${spoofed.trim() || 'killed before its count'} spoofed datagrams; victim refused ${got.json.counters.rejected.badMac} by MAC, ${got.json.counters.rejected.badChunk} chunk(s) by SHA-256; sender dropped ${sent.json.counters.dropped.badMac} reports by MAC`);
  }, 180_000);
});
