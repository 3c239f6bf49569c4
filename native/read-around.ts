/**
 * Reading a failing disk: import and capture share this (synchronous, for
 * worker threads and for the agent).
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { BadRange } from '../protocol/manifest.js';
import type { Disk } from './disk.js';

/** True for the errno codes a failing disk gives. */
export function isIoError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EIO' || code === 'ENXIO' || code === 'ENODATA' || code === 'EBADMSG' || code === 'EREMOTEIO';
}

/**
 * Reads [position, position+length) into buf. On a read error, reads around
 * it in smaller pieces down to one sector: bad sectors become zeros and are
 * returned as bad ranges, or, without ignoreReadErrors, the first bad
 * sector's offset is thrown.
 */
export function readAround(d: Disk, buf: Buffer, position: number, length: number, ignoreReadErrors: boolean): BadRange[] {
  try {
    const n = d.readSync(buf, position, length);
    if (n !== length) throw new ClonecastError(ERR.READ_ERROR, `${d.path} ended at byte ${position + n}, before its reported size; did it shrink during the import?`);
    return [];
  } catch (err) {
    if (!isIoError(err)) throw err;
  }
  const bad: BadRange[] = [];
  const sector = d.logicalSectorSize;
  const piece = 64 << 10;
  for (let off = 0; off < length; off += piece) {
    const plen = Math.min(piece, length - off);
    const view = buf.subarray(off);
    try {
      d.readSync(view, position + off, plen);
      continue;
    } catch (err) {
      if (!isIoError(err)) throw err;
    }
    for (let s = 0; s < plen; s += sector) {
      const slen = Math.min(sector, plen - s);
      try {
        d.readSync(buf.subarray(off + s), position + off + s, slen);
      } catch (err) {
        if (!isIoError(err)) throw err;
        const at = position + off + s;
        if (!ignoreReadErrors) {
          throw new ClonecastError(
            ERR.READ_ERROR,
            `read error (${(err as NodeJS.ErrnoException).code}) at byte ${at} of ${d.path}; the disk may be failing. Re-run with --ignore-read-errors to store unreadable sectors as zeros and record them as bad ranges`,
            { offset: at },
          );
        }
        buf.fill(0, off + s, off + s + slen);
        const last = bad[bad.length - 1];
        if (last !== undefined && last.offset + last.length === at) last.length += slen;
        else bad.push({ offset: at, length: slen });
      }
    }
  }
  return bad;
}

