/**
 * A fixed pool of worker threads running one script; each worker takes one
 * task at a time. Used to spread chunk hashing, compression and I/O over the
 * cores while the main thread only schedules.
 */
import { Worker } from 'node:worker_threads';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { projectRoot } from '../../native/addon.js';
import { ClonecastError } from '../../protocol/errors.js';

/** Default worker count: one per core, plus one so that I/O waits overlap. */
export const DEFAULT_WORKERS = availableParallelism() + 1;

/**
 * The compiled JavaScript file of a module next to `from`. When running from
 * TypeScript sources (tests), this maps to the same module under dist/.
 */
export function compiledSibling(from: string, name: string): string {
  const file = fileURLToPath(new URL(`./${name}.js`, from));
  if (!fileURLToPath(from).endsWith('.ts')) return file;
  const root = projectRoot();
  return join(root, 'dist', relative(root, file));
}

interface Pending<T, R> {
  task: T;
  resolve: (r: R) => void;
  reject: (e: unknown) => void;
}

/** The shape of a worker's reply. */
export type Reply<R> = { ok: true; result: R } | { ok: false; error: { code?: string; message: string; details?: Record<string, unknown> } };

/** A pool of workers; run() queues a task and resolves with its result. */
export class WorkerPool<T, R> {
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Pending<T, R>>();
  private readonly queue: Pending<T, R>[] = [];
  private broken: unknown;
  private readonly workers: Worker[] = [];

  constructor(script: string, size: number, workerData: unknown) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(script, { workerData });
      w.on('message', (msg: Reply<R>) => this.onMessage(w, msg));
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => {
        if (code !== 0 && this.broken === undefined) this.fail(new Error(`a chunk worker exited with code ${code}`));
      });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  /** Runs one task on the next free worker. */
  run(task: T): Promise<R> {
    if (this.broken !== undefined) return Promise.reject(this.broken);
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ task, resolve, reject });
      this.pump();
    });
  }

  /** Stops every worker. */
  async close(): Promise<void> {
    this.broken ??= new Error('worker pool closed');
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private pump(): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop()!;
      const job = this.queue.shift()!;
      this.busy.set(w, job);
      w.postMessage(job.task);
    }
  }

  private onMessage(w: Worker, msg: Reply<R>): void {
    const job = this.busy.get(w);
    this.busy.delete(w);
    this.idle.push(w);
    if (job !== undefined) {
      if (msg.ok) job.resolve(msg.result);
      else job.reject(new ClonecastError(msg.error.code ?? 'CLONECAST_ERR_WORKER', msg.error.message, msg.error.details ?? {}));
    }
    this.pump();
  }

  private fail(err: unknown): void {
    if (this.broken !== undefined) return;
    this.broken = err;
    for (const job of [...this.busy.values(), ...this.queue]) job.reject(err);
    this.busy.clear();
    this.queue.length = 0;
  }
}
