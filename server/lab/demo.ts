/**
 * `clonecast lab demo`: the whole story in one command. A small sample image
 * with a GPT and an ext4 filesystem, a lab with a server and 4 agents on
 * loop devices, a deploy shown live (the dashboard URL printed while it
 * runs), every disk compared with the image, and everything torn down.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../store/import.js';
import { Store } from '../store/store.js';
import { LAB_DIR, labDown, labUp } from './cli.js';

const MiB = 1 << 20;

/** Runs the demo; resolves with true if every disk came out identical and verified. */
export async function labDemo(cli: string, out: (line: string) => void, port?: number): Promise<boolean> {
  const dir = join(LAB_DIR, 'demo');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, 'files'), { recursive: true });
  out('1. a sample image: 64 MiB, GPT (EFI system + Linux), ext4 with files');
  const raw = join(dir, 'sample.img');
  writeFileSync(join(dir, 'files', 'README.txt'), 'This disk was imaged by clonecast lab demo.\n');
  const random = Buffer.alloc(16 * MiB);
  for (let i = 0; i < random.length; i += 4) random.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
  writeFileSync(join(dir, 'files', 'data.bin'), random);
  execFileSync('truncate', ['-s', `${64 * MiB}`, raw]);
  execFileSync('sgdisk', ['-n', '1:2048:+16M', '-t', '1:ef00', '-c', '1:ESP', '-n', '2:0:0', '-t', '2:8300', '-c', '2:root', raw], { stdio: 'ignore' }); // (-q would make sgdisk write nothing to a blank disk)
  const rootStart = (2048 + 32768) * 512;
  const rootBlocks = Math.floor((64 * MiB - rootStart - 34 * 512) / 1024);
  execFileSync('mkfs.ext4', ['-q', '-d', join(dir, 'files'), '-E', `offset=${rootStart}`, raw, `${rootBlocks}k`]);
  const data = join(dir, 'data');
  const imported = await importImage(Store.open(data), raw, 'demo', {});
  out(`   imported demo@${imported.version}: ${imported.dataChunks} data chunks, ${imported.zeroChunks} zero chunks`);

  out('2. the lab: a bridge, a server (10.77.0.1) and 4 machines with empty 64 MiB loop-device disks');
  const state = await labUp({ clients: 4, data, diskBytes: 64 * MiB, cli, port });
  let ok = false;
  try {
    out(`   dashboard (live while the deploy runs): ${state.dashboard}  token: ${state.token}`);
    await new Promise((r) => setTimeout(r, 1500));
    out('3. deploy demo to the 4 machines by multicast');
    const deploy = spawn('ip', ['netns', 'exec', 'cclabs', process.execPath, cli, 'deploy', 'demo', '--server', state.serverUrl, '--any', '--clients', '4', '--rate', '200'], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, CLONECAST_TOKEN: state.token, CLONECAST_FINGERPRINT: state.fingerprint } });
    const code = await new Promise<number | null>((r) => deploy.on('close', r));
    out(`4. check every disk against the image (deploy exited ${code})`);
    const image = Buffer.alloc(64 * MiB);
    const fd = openSync(raw, 'r');
    readSync(fd, image, 0, image.length, 0);
    closeSync(fd);
    ok = code === 0;
    for (const m of state.machines) {
      const got = Buffer.alloc(image.length);
      const d = openSync(m.disk, 'r');
      readSync(d, got, 0, got.length, 0);
      closeSync(d);
      const same = got.equals(image);
      const sg = spawnSync('sgdisk', ['-v', m.disk], { encoding: 'utf8' }).stdout;
      // "No problems found" is also what sgdisk says of a blank disk: count the partitions too.
      const parts = spawnSync('sgdisk', ['-p', m.disk], { encoding: 'utf8' }).stdout.split('\n').filter((l) => /^\s+\d+\s+\d+\s+\d+/.test(l)).length;
      const fsck = spawnSync('e2fsck', ['-fn', `${m.disk}?offset=${rootStart}`]).status;
      out(`   ${m.name} ${m.disk}: ${same ? 'identical to the image' : 'DIFFERS'}; GPT with ${parts} partitions, sgdisk -v: ${/No problems found/.test(sg) ? 'no problems' : 'PROBLEMS'}; e2fsck -fn: ${fsck === 0 ? 'clean' : `exit ${fsck}`}`);
      ok &&= same && fsck === 0 && parts === 2 && /No problems found/.test(sg);
    }
  } finally {
    out('5. tear down');
    const down = labDown();
    out(`   removed ${down.namespaces.length} namespaces, the loop devices and the disks`);
  }
  out(ok ? 'demo: all 4 disks written, verified and identical' : 'demo: FAILED (see above)');
  return ok;
}
