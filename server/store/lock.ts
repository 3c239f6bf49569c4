/**
 * Lock files in the store's locks/ folder. A lock holds the owner's pid; a
 * lock whose process is gone (killed, crashed) is stale and is taken over.
 */
import { openSync, readFileSync, readdirSync, unlinkSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../../protocol/errors.js';

/** A held lock; release() removes it. */
export interface Lock {
  path: string;
  release(): void;
}

/** True if a process with this pid exists. */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pid holding the lock at path, if that process still runs. */
export function lockHolder(path: string): number | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  const pid = Number.parseInt(text.split('\n')[0], 10);
  return isAlive(pid) && pid !== process.pid ? pid : null;
}

/**
 * Takes the lock at path or throws BUSY naming the holder and what it does.
 * `what` says what the lock guards, for the message ("image win11").
 */
export function acquireLock(path: string, what: string, purpose: string): Lock {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      try {
        writeSync(fd, `${process.pid}\n${purpose}\n${new Date().toISOString()}\n`);
      } catch (err) {
        // A full or failing disk: no half-made lock left behind.
        closeSync(fd);
        unlinkSync(path);
        throw err;
      }
      closeSync(fd);
      let released = false;
      return {
        path,
        release() {
          if (released) return;
          released = true;
          try {
            unlinkSync(path);
          } catch {
            // already gone: nothing to release
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = lockHolder(path);
      if (holder !== null) {
        const doing = readFileSync(path, 'utf8').split('\n')[1] ?? 'working';
        throw new ClonecastError(
          ERR.BUSY,
          `${what} is busy: process ${holder} is ${doing}; wait for it to finish (or stop it) and try again`,
          { pid: holder, lock: path },
        );
      }
      // Stale: its owner died. Remove and try again.
      try {
        unlinkSync(path);
      } catch {
        // another process removed it first
      }
    }
  }
  throw new ClonecastError(ERR.BUSY, `${what} is busy: could not take ${path}; try again`);
}

/** Live holders of lock files in dir whose names start with prefix. */
export function liveLocks(dir: string, prefix: string): { file: string; pid: number; doing: string }[] {
  const out: { file: string; pid: number; doing: string }[] = [];
  for (const file of readdirSync(dir)) {
    if (!file.startsWith(prefix)) continue;
    const pid = lockHolder(join(dir, file));
    if (pid === null) continue;
    let doing = 'working';
    try {
      doing = readFileSync(join(dir, file), 'utf8').split('\n')[1] || doing;
    } catch {
      // released since: it was working a moment ago
    }
    out.push({ file, pid, doing });
  }
  return out;
}
