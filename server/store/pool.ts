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
export type Reply<R> = { id: number } & ({ ok: true; result: R } | { ok: false; error: { code?: string; message: string; details?: Record<string, unknown> } });

/** Tasks a worker holds at once: one computing while another's I/O is in flight. */
export const WORKER_DEPTH = 2;

/** A pool of workers; run() queues a task and resolves with its result. */
export class WorkerPool<T, R> {
  private readonly load = new Map<Worker, Map<number, Pending<T, R>>>();
  private readonly queue: Pending<T, R>[] = [];
  private broken: unknown;
  private nextId = 0;

  constructor(script: string, size: number, workerData: unknown) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(script, { workerData });
      w.on('message', (msg: Reply<R>) => this.onMessage(w, msg));
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => {
        if (code !== 0 && this.broken === undefined) this.fail(new Error(`a chunk worker exited with code ${code}`));
      });
      this.load.set(w, new Map());
    }
  }

  /** Runs one task on the least busy worker. */
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
    await Promise.all([...this.load.keys()].map((w) => w.terminate()));
  }

  private pump(): void {
    while (this.queue.length > 0) {
      let best: Worker | undefined;
      for (const [w, jobs] of this.load) if (jobs.size < WORKER_DEPTH && (best === undefined || jobs.size < this.load.get(best)!.size)) best = w;
      if (best === undefined) return;
      const job = this.queue.shift()!;
      const id = this.nextId++;
      this.load.get(best)!.set(id, job);
      best.postMessage({ id, task: job.task });
    }
  }

  private onMessage(w: Worker, msg: Reply<R>): void {
    const jobs = this.load.get(w)!;
    const job = jobs.get(msg.id);
    jobs.delete(msg.id);
    if (job !== undefined) {
      if (msg.ok) job.resolve(msg.result);
      else job.reject(new ClonecastError(msg.error.code ?? 'CLONECAST_ERR_WORKER', msg.error.message, msg.error.details ?? {}));
    }
    this.pump();
  }

  private fail(err: unknown): void {
    if (this.broken !== undefined) return;
    this.broken = err;
    for (const jobs of this.load.values()) {
      for (const job of jobs.values()) job.reject(err);
      jobs.clear();
    }
    for (const job of this.queue) job.reject(err);
    this.queue.length = 0;
  }
}
