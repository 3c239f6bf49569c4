/**
 * The agent's steps after a verified write, before the result goes to the
 * server (and so before any reboot): the GPT backup moved to the end of a
 * larger disk, the last partition grown on request, swap recreated
 * (native/disk-finish.ts does the work; the server's export shares it).
 * Nothing here runs on a disk that did not verify.
 */
import { statSync } from 'node:fs';
import type { Assign } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Manifest } from '../protocol/manifest.js';
import { Disk } from '../native/disk.js';
import { describeFinish, finishDisk, type FinishReport } from '../native/disk-finish.js';
import type { ReceiverResult } from '../transfer/receiver.js';
import { nameMachine } from './naming.js';
import { readTable } from '../native/disk-table.js';

/** True when the image or the Assign asks for anything after the write. */
export function wantsAfterWrite(a: Assign, manifest: Manifest, targetSize: number): boolean {
  const swap = manifest.meta.partitions?.some((p) => p.method === 'swap') === true;
  const larger = targetSize > manifest.meta.diskSize && manifest.meta.partitionTable.scheme === 'gpt';
  return swap || larger || (a.growLast === true && targetSize > manifest.meta.diskSize);
}

/** Size in bytes of a device or file. */
export function targetSize(path: string): number {
  const st = statSync(path);
  if (!st.isBlockDevice()) return st.size;
  const d = Disk.open(path, { write: false, force: true });
  try {
    return d.size;
  } finally {
    d.close();
  }
}

/** Runs the post-write steps on the verified disk a.device; null when there was nothing to do. */
export async function afterWrite(a: Assign, manifest: Manifest, log?: (level: 'info' | 'warn', message: string) => void): Promise<FinishReport | null> {
  const size = targetSize(a.device!);
  if (!wantsAfterWrite(a, manifest, size)) return null;
  // On the target machine: its own kernel may mount the image's XFS or btrfs to grow it.
  return finishDisk(a.device!, size, manifest.meta, { growLast: a.growLast === true, mayMount: true, log });
}

/**
 * After a receiver's run: the post-write steps if the disk verified (skipped, with a warning, when it
 * was not read back). Resolves with the error that ends the machine's session as failed, or undefined.
 */
export async function afterVerified(a: Assign, manifest: Manifest, r: ReceiverResult, log?: (level: 'info' | 'warn', message: string) => void): Promise<unknown> {
  if (r.verification === undefined) {
    if (manifest.meta.partitions?.some((p) => p.method === 'swap') === true || a.growLast === true || (a.machineName ?? '') !== '') log?.('warn', `session ${a.sessionId}: the disk was not verified, so swap is not recreated, nothing is grown and the machine is not named`);
    return undefined;
  }
  try {
    const done = await afterWrite(a, manifest, log);
    if (done !== null) log?.('info', `session ${a.sessionId}: ${describeFinish(done)}`);
  } catch (err) {
    return new ClonecastError((err as ClonecastError).code ?? ERR.WRITE_ERROR, `the image was written and verified, but finishing the disk failed: ${(err as Error).message}`, {}, { cause: err });
  }
  // Named last, on the disk as it will boot (after the table and partitions are final).
  if (a.machineName !== undefined && a.machineName !== null && a.machineName !== '') {
    try {
      // The table as it is now on the disk: finishing may have grown the last partition.
      const disk = Disk.open(a.device!, { write: false, force: true });
      const table = await readTable(disk).finally(() => disk.close());
      const named = await nameMachine(a.device!, table, a.machineName, { unattend: a.unattend ?? '', log });
      if (named.length === 0) log?.('info', `session ${a.sessionId}: no Linux root or Windows system found to name ${a.machineName}`);
    } catch (err) {
      return new ClonecastError((err as ClonecastError).code ?? ERR.WRITE_ERROR, `the image was written and verified, but naming the machine ${a.machineName} failed: ${(err as Error).message}`, {}, { cause: err });
    }
  }
  return undefined;
}
