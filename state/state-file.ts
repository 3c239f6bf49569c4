/**
 * Durable JSON state off the event loop's hot path. A StateFile holds the
 * value of one small file (machines.json, sessions.json, captures.json,
 * pxe/leases.json): `set()` marks it dirty and schedules a write after a
 * debounce; `commit()` resolves once the value as of the call is on disk.
 * Commits that arrive while a write is under way share the next write
 * (group commit: one write + fsync for many changes). A write is temp file,
 * fsync, rename, fsync of the folder, all with fs/promises.
 *
 * A write that fails never throws out: the value stays dirty and is retried
 * with back-off, the failure shows in health() and a 'health' event, and
 * the temp file is removed. An unreadable file is never overwritten: it is
 * renamed aside and the state starts from the default.
 */
import { EventEmitter } from 'node:events';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Defaults of StateFileOptions. */
export const STATE_DEFAULTS = Object.freeze({
  /** Wait after a change before writing, ms (coalesces bursts of changes). */
  debounceMs: 200,
  /** First retry after a failed write, ms; doubles each time. */
  retryMs: 500,
  /** Longest wait between retries, ms. */
  retryMaxMs: 30_000,
  /** How long close() waits for the last write, ms. */
  closeMs: 5_000,
});

/** The filesystem calls a StateFile makes (tests inject failures or count calls). */
export interface StateFs {
  open(path: string, flags: string, mode?: number): Promise<{ writeFile(data: Buffer): Promise<void>; sync(): Promise<void>; close(): Promise<void> }>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(path: string, o: { recursive: true }): Promise<unknown>;
}

/** How to keep one state file. */
export interface StateFileOptions<T> {
  /** The file; its folder is created if missing. */
  path: string;
  /** The value when there is no file, or it was unreadable. */
  initial: () => T;
  /** Checks what was read; throws if it is not a valid value (the file is then set aside). */
  validate?: (v: unknown) => T;
  /** Turns the value into the file's contents (default: JSON, one space indent). */
  serialize?: (v: T) => string;
  debounceMs?: number;
  retryMs?: number;
  retryMaxMs?: number;
  closeMs?: number;
  fs?: StateFs;
  now?: () => number;
}

/** Is the file saved, and since when not. */
export interface StateHealth {
  /** False while the last write failed. */
  ok: boolean;
  /** The last write's error ("ENOSPC: no space left on device, ..."), or null. */
  error: string | null;
  /** When writes started failing (ms since epoch), or null. */
  since: number | null;
  /** Oldest change not yet on disk (ms since epoch), or null when clean. */
  pendingSince: number | null;
  /** Last successful write (ms since epoch), or null. */
  lastWriteAt: number | null;
  /** Failed writes since the file was opened. */
  failures: number;
}

/** What watchers of a state file (health checks, metrics) need of it, whatever its value type. */
export interface StateStatus {
  readonly path: string;
  readonly dirty: boolean;
  health(): StateHealth;
  on(event: 'health', listener: (h: StateHealth) => void): unknown;
}

/** A JSON list file (the server's registries): [] if absent; not a list is unreadable. */
export function listFile<T>(path: string, o: Omit<StateFileOptions<T[]>, 'path' | 'initial' | 'validate'> = {}): StateFile<T[]> {
  return new StateFile<T[]>({
    path,
    initial: () => [],
    validate: (v) => {
      if (!Array.isArray(v)) throw new Error('not a list');
      return v as T[];
    },
    ...o,
  });
}

/** One durable JSON file. Emits 'health' (StateHealth) when ok or error changes. */
export class StateFile<T> extends EventEmitter {
  /** Set when the file could not be read: the name it was kept under. */
  readonly setAside: string | undefined;
  private current: T;
  private readonly o: StateFileOptions<T>;
  private readonly fs: StateFs;
  private readonly now: () => number;
  /** Bumped by every set(); a write records the generation it saved. */
  private generation = 0;
  private savedGeneration = 0;
  private pendingSince: number | null = null;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private waiters: { generation: number; resolve: () => void; reject: (err: Error) => void }[] = [];
  private health_: StateHealth = { ok: true, error: null, since: null, pendingSince: null, lastWriteAt: null, failures: 0 };
  private retryWait = 0;
  private closed = false;
  private seq = 0;
  /** The folder exists (made or seen by the last successful write): no mkdir per write. */
  private folderReady = false;
  /** When the last write started (ms since epoch). */
  private lastAttemptAt = 0;

  constructor(o: StateFileOptions<T>) {
    super();
    this.o = o;
    this.fs = o.fs ?? (fsp as unknown as StateFs);
    this.now = o.now ?? Date.now;
    const { value, setAside } = load(o);
    this.current = value;
    this.setAside = setAside;
  }

  /** The path of the file. */
  get path(): string {
    return this.o.path;
  }

  /** The value in memory (the newest, saved or not). */
  get value(): T {
    return this.current;
  }

  /** True while a change is not yet on disk. */
  get dirty(): boolean {
    return this.generation !== this.savedGeneration;
  }

  /** Replaces the value (or changes it with a producer) and schedules a write. */
  set(v: T | ((old: T) => T)): void {
    this.current = typeof v === 'function' ? (v as (old: T) => T)(this.current) : v;
    this.touch();
  }

  /** Marks the value changed in place (a producer that mutates) and schedules a write. */
  touch(): void {
    this.generation++;
    this.pendingSince ??= this.now();
    if (this.closed) return;
    this.schedule(this.health_.ok ? (this.o.debounceMs ?? STATE_DEFAULTS.debounceMs) : this.retryWait);
  }

  /**
   * Resolves once the value as of this call is on disk; concurrent commits
   * share one write. Rejects if that write fails (the value stays dirty and
   * is retried in the background). While writes fail, a commit tries at
   * once at most every retryMs and otherwise rejects at once: a flood of
   * commits (DHCP REQUESTs on a full disk) costs no write each, and the
   * first commit after the disk recovers still writes without waiting for
   * the back-off.
   */
  commit(): Promise<void> {
    return this.request(false);
  }

  private request(force: boolean): Promise<void> {
    if (!this.dirty) return Promise.resolve();
    const retryMs = this.o.retryMs ?? STATE_DEFAULTS.retryMs;
    if (!force && !this.health_.ok && this.writing === undefined && this.now() - this.lastAttemptAt < retryMs) {
      return Promise.reject(new Error(`${basename(this.o.path)} could not be saved: ${this.health_.error}`));
    }
    const generation = this.generation;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ generation, resolve, reject }));
    this.kick();
    return p;
  }

  /** Whether the file is saved; see StateHealth. */
  health(): StateHealth {
    return { ...this.health_, pendingSince: this.pendingSince };
  }

  /** Writes what is pending (best effort, at most closeMs) and stops writing. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    const deadline = new Promise<void>((r) => setTimeout(r, this.o.closeMs ?? STATE_DEFAULTS.closeMs).unref());
    const last = this.dirty ? this.request(true).catch(() => undefined) : (this.writing ?? Promise.resolve());
    await Promise.race([last, deadline]);
    this.closed = true;
    clearTimeout(this.timer);
    for (const w of this.waiters.splice(0)) w.reject(new Error(`${basename(this.o.path)} is closed`));
  }

  /**
   * Writes soon unless a write is under way (which then starts the next).
   * The write starts after the current turn of the event loop (setImmediate),
   * so that every commit made while handling one batch of packets shares it.
   */
  private kick(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.writing !== undefined) return;
    this.writing = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.write());
  }

  private schedule(ms: number): void {
    if (this.timer !== undefined || this.writing !== undefined) return; // a write will follow anyway
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.kick();
    }, ms);
  }

  /** One write at a time; loops while commits wait for a newer generation. */
  private async write(): Promise<void> {
    try {
      while (this.dirty && !this.closed) {
        const generation = this.generation;
        this.lastAttemptAt = this.now();
        try {
          // Serialising is inside: a value that cannot be turned into JSON is a failed write, not an exception.
          const text = (this.o.serialize ?? ((v: T) => JSON.stringify(v, null, 1)))(this.current);
          await this.writeFile(Buffer.from(text));
        } catch (err) {
          this.failed(err as Error);
          return;
        }
        this.saved(generation);
        if (!this.waiters.some((w) => w.generation > this.savedGeneration)) break;
      }
    } finally {
      this.writing = undefined;
      // Changes made during the write get their own debounced write.
      if (this.dirty && !this.closed && this.health_.ok) this.schedule(this.o.debounceMs ?? STATE_DEFAULTS.debounceMs);
    }
  }

  private saved(generation: number): void {
    this.savedGeneration = generation;
    this.pendingSince = this.dirty ? this.now() : null;
    const wasOk = this.health_.ok;
    this.health_ = { ...this.health_, ok: true, error: null, since: null, lastWriteAt: this.now() };
    this.retryWait = 0;
    const done = this.waiters.filter((w) => w.generation <= generation);
    this.waiters = this.waiters.filter((w) => w.generation > generation);
    for (const w of done) w.resolve();
    if (!wasOk) this.emit('health', this.health());
  }

  private failed(err: Error): void {
    const wasOk = this.health_.ok;
    const code = (err as NodeJS.ErrnoException).code;
    const error = code === undefined || err.message.startsWith(code) ? err.message : `${code}: ${err.message}`;
    this.health_ = { ...this.health_, ok: false, error, since: this.health_.since ?? this.now(), failures: this.health_.failures + 1 };
    const retryMs = this.o.retryMs ?? STATE_DEFAULTS.retryMs;
    this.retryWait = this.retryWait === 0 ? retryMs : Math.min(this.retryWait * 2, this.o.retryMaxMs ?? STATE_DEFAULTS.retryMaxMs);
    // Every waiter fails with this write, also those that came during it: commits fail fast while the disk fails.
    const failed = this.waiters.splice(0);
    const reason = new Error(`${basename(this.o.path)} could not be saved: ${error}`, { cause: err });
    for (const w of failed) w.reject(reason);
    if (wasOk || this.health_.error !== error) this.emit('health', this.health());
    if (!this.closed) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.kick();
      }, this.retryWait);
      this.timer.unref();
    }
  }

  /** Temp file, fsync, rename, fsync of the folder; the temp file is removed if any step fails. */
  private async writeFile(data: Buffer): Promise<void> {
    const folder = dirname(this.o.path);
    if (!this.folderReady) await this.fs.mkdir(folder, { recursive: true });
    const tmp = join(folder, `.${basename(this.o.path)}.tmp.${process.pid}.${++this.seq}`);
    let renamed = false;
    try {
      const fh = await this.fs.open(tmp, 'w', 0o644);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await this.fs.rename(tmp, this.o.path);
      renamed = true;
      this.folderReady = true;
      const dir = await this.fs.open(folder, 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    } catch (err) {
      this.folderReady = false; // the folder may be gone: make it again next time
      throw err;
    } finally {
      if (!renamed) await this.fs.unlink(tmp).catch(() => undefined);
    }
  }
}

/** Reads the file once, at start (before any service runs, so sync is fine); removes temp files a crash left. */
function load<T>(o: StateFileOptions<T>): { value: T; setAside: string | undefined } {
  const prefix = `.${basename(o.path)}.tmp.`;
  try {
    for (const n of readdirSync(dirname(o.path))) if (n.startsWith(prefix)) rmSync(join(dirname(o.path), n), { force: true });
  } catch {
    // no folder yet
  }
  if (!existsSync(o.path)) return { value: o.initial(), setAside: undefined };
  try {
    const raw = JSON.parse(readFileSync(o.path, 'utf8')) as unknown;
    return { value: o.validate !== undefined ? o.validate(raw) : (raw as T), setAside: undefined };
  } catch {
    const setAside = `${o.path}.unreadable-${Date.now()}`;
    renameSync(o.path, setAside);
    return { value: o.initial(), setAside };
  }
}
