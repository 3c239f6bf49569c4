/**
 * The overlapped read-back: each chunk is read back from the disk soon
 * after it is written, while reception goes on, and checked against the
 * manifest (xxh64 or SHA-256 for data: matches(); all zero for zero chunks). When the last
 * chunk is written only the few chunks still queued are left to read, so
 * "verified" follows the last write closely instead of a whole-disk pass.
 *
 * Reception is never slowed: one read is in flight at a time into one
 * aligned buffer, the queue holds chunk numbers only, and while the writer
 * is behind (busy()) reading waits, so that writes keep the disk. A chunk
 * that reads back wrong is written again: a zero chunk here, a data chunk
 * by the receiver, which asks for it again (rewrite()); one that reads
 * back wrong a second time names the disk as failing (damaged()).
 *
 * The result is what verifyDisk() (verifier.ts) reports for the same disk:
 * per-chunk HMACs under the nonce are kept and combined in chunk order at
 * the end, so the keyed digest is the same value the server computes.
 */
import { createHmac } from 'node:crypto';
import { chunkAt, ChunkKind, definesBytes, diskDigest, tableLength, type Manifest } from '../protocol/manifest.js';
import { chunkLength, isZero } from '../protocol/chunk.js';
import { sha256, xxh64 } from '../protocol/hash.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Disk } from '../native/disk.js';
import { KeyedDigest, ReadBackStopped, verifyDisk, type Verification } from './verifier.js';

/** Defaults of ReadBackOptions. */
export const READBACK_DEFAULTS = Object.freeze({
  /** A chunk may be written again this many times after reading back wrong; once more and the disk is named as failing. */
  maxRewrites: 1,
});

/** How a ReadBack reports back to its receiver. */
export interface ReadBackEvents {
  /** True while reading would compete with writes the receiver is waiting on (the writer is behind). */
  busy(): boolean;
  /** True once the receiver is stopped or failed: no read is started after that. */
  stopped(): boolean;
  /** Data chunk c read back wrong: the receiver marks it needed again (it is fetched and written again, then pushed here again). */
  rewrite(chunk: number): void;
  /** Chunk c read back wrong again after being written again: the disk does not keep what is written. */
  /** cause: the read or zeroing itself failed (an I/O error), rather than reading back other bytes. */
  damaged(chunk: number, verification: Verification, cause?: Error): void;
}

/** Options of a ReadBack. */
export interface ReadBackOptions {
  /** The Assign's nonce: per-chunk HMACs are kept for the keyed digest. */
  nonce?: Uint8Array;
  maxRewrites?: number;
}

const MAX_BAD_LISTED = 32;

const enum Check {
  PENDING = 0,
  GOOD = 1,
}

/** The read-back of one receiver's disk. */
export class ReadBack {
  /** Chunks read back and found good, and chunks found wrong (each counted once per reading). */
  readonly counters = { verified: 0, bad: 0, zeroRewrites: 0, rewrites: 0 };
  private readonly n: number;
  private readonly checked: Uint8Array;
  private readonly attempts: Uint8Array;
  /** HMAC-SHA256(nonce, bytes) of each chunk found good (32 bytes each), with a nonce. */
  private readonly hmacs: Buffer | undefined;
  private readonly zeroHmacs = new Map<number, Buffer>();
  private readonly queue: number[] = [];
  private head = 0;
  private buf: Buffer | undefined;
  private reading: Promise<void> | undefined;
  private draining = false;

  constructor(
    private readonly disk: Disk,
    private readonly manifest: Manifest,
    private readonly events: ReadBackEvents,
    private readonly options: ReadBackOptions = {},
  ) {
    this.n = tableLength(manifest.table);
    this.checked = new Uint8Array(this.n);
    this.attempts = new Uint8Array(this.n);
    this.hmacs = options.nonce !== undefined && options.nonce.length > 0 ? Buffer.alloc(32 * this.n) : undefined;
  }

  /** Chunks waiting to be read back. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  /** Chunk c is on the disk (written, zeroed, or known from an earlier run): read it back soon. */
  push(c: number): void {
    if (this.checked[c] === Check.GOOD) return; // verified already (a chunk found good by a scan)
    this.queue.push(c);
    this.pump();
  }

  /** Chunk c was found good on the disk by a scan that read these bytes: counted as verified without reading it again. */
  accept(c: number, data: Uint8Array): void {
    this.good(c, data);
  }

  /** Reading may go on (the writer caught up): called by the receiver when it wrote a chunk. */
  kick(): void {
    this.pump();
  }

  /**
   * Reads whatever is still queued, busy or not, and resolves with the
   * verification of the whole disk. Chunks sent back for rewriting are not
   * verified yet: incomplete() says so, and the receiver fetches them and
   * calls finish() again.
   */
  async finish(): Promise<Verification> {
    this.draining = true;
    try {
      while (this.pending > 0 || this.reading !== undefined) {
        if (this.events.stopped()) throw new ReadBackStopped();
        this.pump();
        await this.reading;
      }
    } finally {
      this.draining = false;
    }
    return this.result();
  }

  /** True while some present chunk is not (yet) verified good. */
  incomplete(): boolean {
    const { table } = this.manifest;
    for (let i = 0; i < this.n; i++) if (this.checked[i] !== Check.GOOD && definesBytes(chunkAt(table, i).kind)) return true;
    return false;
  }

  /** Resolves once no read is in flight (the disk may then be closed). */
  async idle(): Promise<void> {
    while (this.reading !== undefined) await this.reading;
  }

  /** What was found so far, as verifyDisk() reports it; the digests only mean something once every chunk is verified. */
  result(): Verification {
    // Bad: chunks whose last reading was wrong and that are not good yet (a chunk written again and then good is not).
    const bad: number[] = [];
    let chunksBad = 0;
    for (let i = 0; i < this.n; i++) {
      if (this.attempts[i] === 0 || this.checked[i] === Check.GOOD) continue;
      chunksBad++;
      if (bad.length < MAX_BAD_LISTED) bad.push(i);
    }
    const v: Verification = { chunksVerified: this.counters.verified, bad, chunksBad, digest: diskDigest(this.manifest) };
    if (this.hmacs !== undefined) {
      const keyed = new KeyedDigest(this.options.nonce!);
      const { table } = this.manifest;
      // In chunk order, present chunks only: the same sequence verifyDisk() feeds it.
      for (let i = 0; i < this.n; i++) if (definesBytes(chunkAt(table, i).kind)) keyed.addHmac(this.hmacs.subarray(32 * i, 32 * i + 32));
      v.keyed = keyed.digest();
    }
    return v;
  }

  private pump(): void {
    if (this.reading !== undefined || this.pending === 0) return;
    if (this.events.stopped()) return;
    if (!this.draining && this.events.busy()) return;
    this.reading = this.readNext().finally(() => {
      this.reading = undefined;
      if (this.queue.length > 4096 && this.head > this.queue.length / 2) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      if (!this.draining) this.pump();
    });
    // A failed read or zeroing ends in damaged() through readNext's own catch: never an unhandled rejection.
    this.reading.catch(() => undefined);
  }

  private async readNext(): Promise<void> {
    const c = this.queue[this.head++];
    try {
      await this.check(c);
    } catch (err) {
      // An I/O error reading the chunk back (or zeroing it again): the disk is failing, and waiting would hang the run.
      if (this.events.stopped()) return;
      this.counters.bad++;
      this.events.damaged(c, this.result(), err as Error);
    }
  }

  private async check(c: number): Promise<void> {
    if (this.checked[c] === Check.GOOD) return; // pushed twice (a rewrite raced a read): already checked
    const { meta, table } = this.manifest;
    const len = chunkLength(c, meta.diskSize, meta.chunkSize);
    const buf = (this.buf ??= this.disk.allocate(meta.chunkSize));
    const got = await this.disk.read(buf, c * meta.chunkSize, len);
    if (this.events.stopped()) return;
    const data = buf.subarray(0, len);
    const kind = chunkAt(table, c).kind;
    const ok = got === len && (kind === ChunkKind.ZERO ? isZero(data) : this.matches(c, data));
    if (ok) {
      this.good(c, data);
      return;
    }
    this.counters.bad++;
    if (this.attempts[c] >= (this.options.maxRewrites ?? READBACK_DEFAULTS.maxRewrites)) {
      this.events.damaged(c, this.result());
      return;
    }
    this.attempts[c]++;
    if (kind === ChunkKind.ZERO) {
      // Ours to write again: zero it and read it once more.
      this.counters.zeroRewrites++;
      await this.disk.zeroRange(c * meta.chunkSize, len);
      if (!this.events.stopped()) this.push(c);
      return;
    }
    this.counters.rewrites++;
    this.events.rewrite(c);
  }

  /**
   * Data chunk c read back as the manifest's. The bytes were checked by SHA-256 before they
   * were written; what is left to find is a disk that returns other bytes than it was given.
   * With a nonce, xxh64 finds that (a chance of 2^-64 to miss it), and the HMAC over the same
   * bytes that good() adds to the keyed digest is the cryptographic check: the server compares
   * it with the digest it computes from its store. One SHA-256 pass per chunk less. Without a
   * nonce nothing else checks the bytes: SHA-256.
   */
  private matches(c: number, data: Uint8Array): boolean {
    const r = chunkAt(this.manifest.table, c);
    return this.hmacs !== undefined ? xxh64(data) === r.xxh64 : sha256(data).equals(r.sha256);
  }

  private good(c: number, data: Uint8Array): void {
    if (this.checked[c] === Check.GOOD) return;
    this.checked[c] = Check.GOOD;
    this.counters.verified++;
    if (this.hmacs === undefined) return;
    const kind = chunkAt(this.manifest.table, c).kind;
    let mac: Buffer;
    if (kind === ChunkKind.ZERO) {
      // Every zero chunk of one length has the same HMAC: computed once.
      mac = this.zeroHmacs.get(data.length) ?? createHmac('sha256', this.options.nonce!).update(data).digest();
      this.zeroHmacs.set(data.length, mac);
    } else {
      mac = createHmac('sha256', this.options.nonce!).update(data).digest();
    }
    mac.copy(this.hmacs, 32 * c);
  }
}

/** The error of a disk that does not read back as written, naming the first bad chunk. */
export function damagedError(target: string, chunkSize: number, v: Verification, failed?: { chunk: number; cause: Error }): ClonecastError {
  if (failed !== undefined) {
    const at = `chunk ${failed.chunk} (offset ${failed.chunk * chunkSize})`;
    return new ClonecastError(ERR.DAMAGED, `verification failed: reading ${target} back failed at ${at}: ${failed.cause.message}; the disk may be failing`, { verification: v }, { cause: failed.cause });
  }
  const first = v.bad[0] ?? 0;
  return new ClonecastError(
    ERR.DAMAGED,
    `verification failed: ${v.chunksBad} chunk(s) of ${target} do not read back as written, the first at chunk ${first} (offset ${first * chunkSize}); the disk may be failing`,
    { verification: v },
  );
}

/** What the receiver's end needs to know. */
export interface EndCheck {
  disk: Disk;
  manifest: Manifest;
  target: string;
  nonce?: Uint8Array;
  /** Read the whole disk back once more at the end (verifyDisk()), and report that pass. */
  finalVerify?: boolean;
  stopped: () => boolean;
}

/**
 * The end of a receiver's run: reads back what is still queued and, with
 * finalVerify, the whole disk once more. Resolves with the verification, or
 * undefined if some chunk was sent back to be fetched again (the receiver
 * goes on receiving and comes back here). Throws DAMAGED if the disk does
 * not keep what is written.
 */
export async function verifyWritten(rb: ReadBack, o: EndCheck): Promise<Verification | undefined> {
  let v = await rb.finish();
  if (rb.incomplete()) return undefined;
  if (o.finalVerify === true) {
    v = await verifyDisk(o.disk, o.manifest, o.stopped, o.nonce);
    if (v.chunksBad > 0) throw damagedError(o.target, o.manifest.meta.chunkSize, v);
  }
  return v;
}
