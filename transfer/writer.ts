/**
 * The writer: a bounded queue of decoded chunks between reception and the
 * disk. Reception never waits for it: when the queue is full the caller
 * drops the chunk (it is still needed and comes again). One write is in
 * flight at a time; halt() makes it leave what is queued, and idle()
 * resolves once no write is in flight, so that the disk can be closed.
 */
import type { Disk } from '../native/disk.js';

/** A decoded chunk waiting for the disk. */
export interface PendingWrite {
  chunk: number;
  buf: Buffer;
  length: number;
}

/** How a Writer reports back. */
export interface WriterEvents {
  /** A chunk is on the disk. */
  written(chunk: number, length: number): void;
  /** A write failed: the writer has halted. */
  failed(err: unknown): void;
  /** The queue ran empty. */
  drained(): void;
}

/** The bounded write queue of one receiver. */
export class Writer {
  private readonly queue: PendingWrite[] = [];
  private readonly spare: Buffer[] = [];
  private writing = false;
  private halted = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly disk: Disk,
    private readonly chunkSize: number,
    private readonly limit: number,
    private readonly events: WriterEvents,
    /** Emulates a slow disk: at most this many bytes per second (tests and demos). */
    private readonly writeLimit?: number,
  ) {}

  /** Chunks queued (including the one being written). */
  get length(): number {
    return this.queue.length;
  }

  /** True when one more chunk would not fit. */
  get full(): boolean {
    return this.queue.length >= this.limit;
  }

  /** Queue fill, 0-255, for STATUS. */
  get fill(): number {
    return Math.min(255, Math.round((255 * this.queue.length) / this.limit));
  }

  /** An aligned buffer to decode a chunk into (give it back with giveBack() if unused). */
  buffer(): Buffer {
    return this.spare.pop() ?? this.disk.allocate(this.chunkSize);
  }

  giveBack(buf: Buffer): void {
    this.spare.push(buf);
  }

  /** Queues a chunk; the caller checked full first. */
  push(item: PendingWrite): void {
    this.queue.push(item);
    void this.drain();
  }

  /** Stops writing after the write in flight; what is queued stays unwritten. */
  halt(): void {
    this.halted = true;
  }

  /** Resolves once no write is in flight. */
  idle(): Promise<void> {
    if (!this.writing) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    let error: unknown;
    try {
      while (this.queue.length > 0 && !this.halted) {
        const item = this.queue[0];
        const t0 = performance.now();
        await this.disk.write(item.buf, item.chunk * this.chunkSize, item.length);
        if (this.writeLimit) {
          const until = t0 + (item.length / this.writeLimit) * 1000;
          while (!this.halted && performance.now() < until) await new Promise((r) => setTimeout(r, Math.min(100, until - performance.now())));
        }
        this.queue.shift();
        this.spare.push(item.buf);
        this.events.written(item.chunk, item.length);
      }
    } catch (err) {
      error = err;
      this.halted = true;
    } finally {
      this.writing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    if (error !== undefined) this.events.failed(error);
    else if (!this.halted) this.events.drained();
  }
}
