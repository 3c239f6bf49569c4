/**
 * Loop devices and mounts this process made, released when it exits even
 * when no `finally` gets to run: the CLI ends on Ctrl-C with process.exit,
 * which skips pending promises but still emits 'exit'. An 'exit' listener
 * may only do synchronous work, so the release runs umount and losetup -d
 * with spawnSync. Each function that makes a device or a mount registers it
 * here and unregisters it once it released it the ordinary way.
 */
import { spawnSync } from 'node:child_process';
import { rmdirSync } from 'node:fs';

const loops = new Set<string>();
const mounts = new Set<string>();
let installed = false;

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', releaseAll);
  // Node ends on SIGTERM and SIGHUP without an 'exit' event: where nothing else handles them (a one-shot
  // command killed by kill, timeout or a closed terminal), turn them into an exit so the release runs.
  for (const [signal, code] of [['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    if (process.listenerCount(signal) === 0) process.once(signal, () => process.exit(code));
  }
}

/** Records loop device dev (a /dev/loopN this process attached) to be detached at exit. */
export function trackLoop(dev: string): void {
  install();
  loops.add(dev);
}

/** Forgets dev: it was detached the ordinary way. */
export function untrackLoop(dev: string): void {
  loops.delete(dev);
}

/** Records dir (a temporary mount point this process mounted and made) to be unmounted and removed at exit. */
export function trackMount(dir: string): void {
  install();
  mounts.add(dir);
}

/** Forgets dir: it was unmounted the ordinary way. */
export function untrackMount(dir: string): void {
  mounts.delete(dir);
}

/** What is still registered (for tests). */
export function tracked(): { loops: string[]; mounts: string[] } {
  return { loops: [...loops], mounts: [...mounts] };
}

/**
 * Unmounts every registered mount (newest first), removes its folder, then
 * detaches every registered loop device. Synchronous; never throws. A mount
 * still busy is detached lazily (umount -l), and a loop device still open
 * (a tool of ours still reading it) is set to detach on its last close,
 * which is what losetup -d does to a busy device.
 */
export function releaseAll(): void {
  for (const dir of [...mounts].reverse()) {
    if (spawnSync('umount', [dir], { stdio: 'ignore' }).status !== 0) spawnSync('umount', ['-l', dir], { stdio: 'ignore' });
    try {
      rmdirSync(dir);
    } catch {
      // still busy or already gone: a folder under the temporary directory
    }
    mounts.delete(dir);
  }
  for (const dev of [...loops].reverse()) {
    spawnSync('losetup', ['-d', dev], { stdio: 'ignore' });
    loops.delete(dev);
  }
}
