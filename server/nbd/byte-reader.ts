/**
 * Reads exact byte counts from a stream, with bounded buffering: the stream
 * is paused while more than `limit` bytes wait unread, so a client that
 * floods costs at most that much memory.
 */
import type { Duplex } from 'node:stream';

/** Thrown by read() when the stream ended before the bytes asked for came. */
export class StreamEnded extends Error {}

/** An exact-length reader over a stream. */
export class ByteReader {
  private parts: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;
  /** Takes bytes received by other means (a socket's onread buffer). */
  readonly push = (b: Buffer): void => this.onData(b);
  private readonly onData = (b: Buffer) => {
    this.parts.push(b);
    this.buffered += b.length;
    if (this.buffered > this.limit) this.stream.pause();
    this.wake();
  };
  private readonly onEnd = () => this.fail(new StreamEnded('the peer closed the connection'));
  private readonly onError = (e: Error) => this.fail(e);

  constructor(
    readonly stream: Duplex,
    private limit = 1 << 20,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** Bytes received and not read yet. */
  get pending(): number {
    return this.buffered;
  }

  /** Resolves with exactly n bytes. */
  read(n: number): Promise<Buffer> {
    if (this.waiter !== undefined) return Promise.reject(new Error('ByteReader: one read at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Changes how many unread bytes are buffered before the stream is paused. */
  setLimit(limit: number): void {
    this.limit = limit;
    if (this.buffered <= limit && this.stream.isPaused()) this.stream.resume();
    this.wake();
  }

  /** Stops listening (before the stream is handed to another reader, e.g. a TLS wrapper). */
  detach(): void {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
  }

  private fail(e: Error): void {
    this.ended ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    if (w === undefined) return;
    if (this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
      if (this.buffered <= this.limit && this.stream.isPaused()) this.stream.resume();
    } else if (this.ended !== undefined) {
      this.waiter = undefined;
      w.reject(this.ended);
    } else if (this.stream.isPaused() && this.buffered <= this.limit + w.n) {
      this.stream.resume();
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.parts[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let o = 0;
      while (o < n) {
        const p = this.parts[0];
        const k = Math.min(p.length, n - o);
        p.copy(out, o, 0, k);
        o += k;
        if (k === p.length) this.parts.shift();
        else this.parts[0] = p.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}
