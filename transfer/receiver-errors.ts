/** The errors a receiver ends with when the sender gives it up or goes quiet. */
import { ClonecastError, ERR } from '../protocol/errors.js';
import { DropReason, versionMismatch } from '../protocol/mcast.js';
import type { ManifestMeta } from '../protocol/manifest.js';

/** The sender dropped this receiver (its ACK said so), for reason. */
export function droppedError(reason: DropReason): ClonecastError {
  const why = reason === DropReason.NO_PROGRESS ? 'it made no progress for too long' : reason === DropReason.SILENT ? 'it was not heard from for too long' : 'the session ended';
  return new ClonecastError(ERR.DROPPED, `the sender gave this receiver up: ${why}; start it again to resume`, { dropped: reason });
}

/** Nothing usable came from sender for silentMs: named as a version mismatch when packets of another version came instead. */
export function silentSenderError(sender: string, silentMs: number, otherVersion: number | undefined): ClonecastError {
  if (otherVersion !== undefined) return new ClonecastError(ERR.PROTOCOL_VERSION, versionMismatch(otherVersion, 'sender', 'agent'), { version: otherVersion });
  return new ClonecastError(ERR.NOT_FOUND, `no word from the sender ${sender} for ${Math.round(silentMs / 1000)} s; is it still running?`);
}

/** The target cannot hold the image: names the size needed and, for a used-block image, the size its filesystems use. */
export function targetTooSmallError(target: string, size: number, meta: ManifestMeta): ClonecastError {
  const used = meta.usedBytes !== undefined ? `; its filesystems use ${meta.usedBytes} bytes, but shrinking the last partition to fit is not built yet` : '';
  return new ClonecastError(ERR.TARGET_TOO_SMALL, `${target} holds ${size} bytes but the image needs ${meta.diskSize}${used}; use a larger disk`, { targetSize: size, imageSize: meta.diskSize, usedBytes: meta.usedBytes ?? meta.diskSize });
}
