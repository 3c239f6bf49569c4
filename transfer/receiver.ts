/**
 * The multicast receiver (docs/protocol.md). Receive loop: decode,
 * validate (sender, session, chunk, sizes), reassemble, check xxh64 against
 * the manifest, hand the chunk to the writer through a bounded queue. A full
 * queue never blocks reception: the chunk stays needed and comes again.
 * Every report interval it tells the sender what it still needs.
 */
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { CHUNK, chunkLength, decodeChunk, isZero } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { initHashes, sha256, xxh64 } from '../protocol/hash.js';
import { decode, DropReason, encodeStatus, fragmentCount, MCAST, PacketType, ReceiverState, statusSize, type DataPacket, type Nack, type Range } from '../protocol/mcast.js';
import type { CreateSocket, RemoteInfo, UdpSocket } from '../protocol/transport.js';
import { Disk } from '../native/disk.js';
import { createUdpSocket, growBuffers } from '../server/mcast/udp.js';

/** What a receiver needs to know about a session (the sender publishes it). */
export interface SessionInfo {
  session: number;
  group: string;
  port: number;
  sender: { address: string; port: number };
  fragmentSize: number;
}

/** Defaults of ReceiverOptions. */
export const RECEIVER_DEFAULTS = Object.freeze({
  /** Decoded chunks waiting for the disk. */
  queueChunks: 8,
  /** Chunks being reassembled at once (each holds a chunk-sized buffer from a pool). */
  maxPartials: 16,
  /** Report interval floor, ms; it grows to 2 round-trip times on slow links. */
  reportMs: 100,
  /** Give up if the sender is silent this long. */
  timeoutMs: 60_000,
  /** Most NACKs in one STATUS. */
  maxNacks: 6,
});

/** How to run a receiver. */
export interface ReceiverOptions {
  session: SessionInfo;
  manifest: Manifest;
  /** Disk or file to write. */
  target: string;
  force?: boolean;
  /** Local IPv4 address of the interface to join the group on. */
  interfaceAddress?: string;
  receiverId?: number;
  /** Check which chunks the target already holds and skip them. */
  resume?: boolean;
  /** Chunks this process already wrote to the target in an earlier run (one byte per chunk, non-zero: written and checked). */
  known?: Uint8Array;
  /** Read the disk back and check every chunk at the end (default true). */
  verify?: boolean;
  queueChunks?: number;
  maxPartials?: number;
  timeoutMs?: number;
  /** Ask for data by unicast from the start (a site multicast cannot reach); otherwise automatic. */
  unicast?: boolean;
  /** Emulates a slow disk: at most this many bytes per second written (tests and demos). */
  writeLimit?: number;
  createSocket?: CreateSocket;
}

/** Counters for progress and tests. */
export interface ReceiverCounters {
  packets: number;
  lost: number;
  duplicates: number;
  chunksWritten: number;
  bytesWritten: number;
  queueFullDrops: number;
  evictions: number;
  nacksSent: number;
  statusSent: number;
  rejected: { malformed: number; foreign: number; otherSession: number; badChunk: number };
}

/** What a receiver did. */
export interface ReceiverResult {
  receiver: number;
  chunks: number;
  skipped: number;
  /** What reading the disk back found (absent with verify: false). */
  verification?: Verification;
  bytesWritten: number;
  seconds: number;
  verified: boolean;
  /** Smoothed round-trip time to the sender, ms. */
  rttMs: number;
  counters: ReceiverCounters;
}

/** What reading a disk back found. */
export interface Verification {
  chunksVerified: number;
  /** Chunks that did not read back as written (the first MAX_BAD_LISTED). */
  bad: number[];
  chunksBad: number;
  /** diskDigest() of what was read back: comparable with the manifest's. */
  digest: Buffer;
}

const MAX_BAD_LISTED = 32;
/** The unicast fallback: no data for this long while the sender sent this many packets. */
const UNICAST_AFTER_MS = 3000;
const UNICAST_AFTER_PACKETS = 64;

const NEEDED = 0;
const PARTIAL = 1;
const QUEUED = 2;
const DONE = 3;
const NOT_SENT = 4; // zero or absent: never on the wire

interface Partial {
  buf: Buffer;
  got: Uint8Array;
  count: number;
  fragments: number;
  lastAt: number;
  nackedAt: number;
}

interface Pending {
  chunk: number;
  buf: Buffer;
  length: number;
}

/** A receiver for one session. */
export class Receiver extends EventEmitter {
  readonly id: number;
  readonly counters: ReceiverCounters = {
    packets: 0,
    lost: 0,
    duplicates: 0,
    chunksWritten: 0,
    bytesWritten: 0,
    queueFullDrops: 0,
    evictions: 0,
    nacksSent: 0,
    statusSent: 0,
    rejected: { malformed: 0, foreign: 0, otherSession: 0, badChunk: 0 },
  };
  state: ReceiverState = ReceiverState.JOINING;
  private readonly n: number;
  private readonly status: Uint8Array;
  private readonly stored: Uint32Array; // stored-form length of each data chunk
  private readonly hashes: BigUint64Array;
  private readonly partials = new Map<number, Partial>();
  private readonly queue: Pending[] = [];
  private readonly spare: Buffer[] = [];
  private readonly partialPool: Buffer[] = [];
  private wanted = 0;
  private done = 0;
  private skipped = 0;
  private socket: UdpSocket | undefined;
  private disk: Disk | undefined;
  private seq = 0;
  private readonly incarnation = randomBytes(4).readUInt32BE(0);
  private firstSeq = -1;
  private maxSeq = -1;
  private srtt = 0;
  private sentAt = new Map<number, number>();
  private cursor = 0;
  private lastHeard = performance.now();
  private writing = false;
  private timer: NodeJS.Timeout | undefined;
  private finished: ((r: ReceiverResult) => void) | undefined;
  private failed: ((e: unknown) => void) | undefined;
  private acked = false;
  private started = 0;
  private stopError: unknown;
  /** Send my data by unicast: asked for, or multicast never arrives while the sender sends. */
  unicast = false;
  private lastDataAt = 0;
  /** The sender's packet sequence in its latest ACK, and what it was when data last arrived. */
  private ackSeq = 0;
  private ackSeqAtData = 0;
  /** Failed or stopped: the writer leaves what is queued. */
  private halted = false;

  constructor(private readonly options: ReceiverOptions) {
    super();
    // Stable across restarts of the same machine and disk, so that the
    // sender sees a restarted receiver as the one it already knows.
    this.id = options.receiverId ?? createHash('sha256').update(`${hostname()}|${options.interfaceAddress ?? ''}|${options.target}`).digest().readUInt32BE(0);
    const { table } = options.manifest;
    this.n = tableLength(table);
    this.status = new Uint8Array(this.n);
    this.stored = new Uint32Array(this.n);
    this.hashes = new BigUint64Array(this.n);
    for (let i = 0; i < this.n; i++) {
      const r = chunkAt(table, i);
      if (r.kind === ChunkKind.DATA) {
        this.stored[i] = CHUNK.HEADER_SIZE + r.storedLength;
        this.hashes[i] = r.xxh64;
        this.wanted++;
      } else {
        this.status[i] = NOT_SENT;
      }
    }
  }

  /** Joins the session and writes the image; resolves when the disk is complete and verified. */
  async run(): Promise<ReceiverResult> {
    this.started = performance.now();
    await initHashes();
    const { meta } = this.options.manifest;
    const disk = Disk.open(this.options.target, { write: true, force: this.options.force, createSize: meta.diskSize });
    this.disk = disk;
    try {
      if (disk.size < meta.diskSize) {
        throw new ClonecastError(ERR.TARGET_TOO_SMALL, `${this.options.target} holds ${disk.size} bytes but the image needs ${meta.diskSize}; use a larger disk`);
      }
      this.markKnown();
      if (this.options.resume) await this.scanExisting();
      await this.zeroChunks();
      if (this.stopError !== undefined) throw this.stopError;
      return await this.receive();
    } finally {
      clearInterval(this.timer);
      this.socket?.close();
      // A write may still be in flight after a failure or stop(): the fd must outlive it.
      while (this.writing) await new Promise((r) => setTimeout(r, 5));
      disk.close();
    }
  }

  /** Chunks done so far (one byte per chunk, 1: written), to hand to a later run on the same disk. */
  doneMap(): Uint8Array {
    const map = new Uint8Array(this.n);
    for (let i = 0; i < this.n; i++) map[i] = this.status[i] === DONE ? 1 : 0;
    return map;
  }

  /** Progress so far. */
  progress(): { state: ReceiverState; done: number; wanted: number; skipped: number } {
    return { state: this.state, done: this.done, wanted: this.wanted, skipped: this.skipped };
  }

  /** Leaves the session: run() rejects with err once no write is in flight. */
  stop(err: unknown): void {
    this.stopError ??= err;
    this.fail(err);
  }

  private markKnown(): void {
    const known = this.options.known;
    if (known === undefined) return;
    if (known.length !== this.n) throw new RangeError(`known map has ${known.length} entries, the image ${this.n} chunks`);
    for (let i = 0; i < this.n; i++) {
      if (known[i] !== 0 && this.status[i] === NEEDED) {
        this.status[i] = DONE;
        this.done++;
        this.skipped++;
      }
    }
  }

  private async scanExisting(): Promise<void> {
    const disk = this.disk!;
    const { meta } = this.options.manifest;
    const buf = disk.allocate(meta.chunkSize);
    for (let i = 0; i < this.n && this.stopError === undefined; i++) {
      if (this.status[i] !== NEEDED) continue;
      const len = chunkLength(i, meta.diskSize, meta.chunkSize);
      const got = await disk.read(buf, i * meta.chunkSize, len);
      if (got === len && xxh64(buf.subarray(0, len)) === this.hashes[i]) {
        this.status[i] = DONE;
        this.done++;
        this.skipped++;
      }
    }
    this.emit('resume', { skipped: this.skipped, wanted: this.wanted });
  }

  private async zeroChunks(): Promise<void> {
    const { meta, table } = this.options.manifest;
    let start = -1;
    let end = -1;
    const flush = async () => {
      if (start >= 0) await this.disk!.zeroRange(start, end - start);
      start = -1;
    };
    for (let i = 0; i < this.n; i++) {
      if (chunkAt(table, i).kind !== ChunkKind.ZERO) continue;
      const s = i * meta.chunkSize;
      const e = s + chunkLength(i, meta.diskSize, meta.chunkSize);
      if (start >= 0 && s === end) end = e;
      else {
        await flush();
        start = s;
        end = e;
      }
    }
    await flush();
  }

  private async receive(): Promise<ReceiverResult> {
    const { session, interfaceAddress } = this.options;
    const socket = (this.options.createSocket ?? createUdpSocket)();
    this.socket = socket;
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    await new Promise<void>((resolve) => socket.bind(session.port, undefined, resolve));
    socket.addMembership(session.group, interfaceAddress);
    growBuffers(socket);
    this.state = this.done === this.wanted ? ReceiverState.VERIFYING : ReceiverState.RECEIVING;
    const result = new Promise<ReceiverResult>((resolve, reject) => {
      this.finished = resolve;
      this.failed = reject;
    });
    this.lastHeard = performance.now(); // scanning and zeroing the disk took time, not the sender
    this.timer = setInterval(() => this.report(), RECEIVER_DEFAULTS.reportMs);
    this.report();
    if (this.done === this.wanted) void this.complete();
    return result;
  }

  // ---- receive loop ----

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    const p = decode(msg);
    if (p === null) {
      this.counters.rejected.malformed++;
      return;
    }
    const { session } = this.options;
    if (rinfo.address !== session.sender.address) {
      this.counters.rejected.foreign++;
      return;
    }
    if (p.session !== session.session) {
      this.counters.rejected.otherSession++;
      return;
    }
    this.lastHeard = performance.now();
    if (p.type === PacketType.DATA) this.onData(p);
    else if (p.type === PacketType.ACK && p.receiver === this.id) {
      this.ackSeq = p.seq;
      this.onAck(p.echo, p.state, p.reason);
    }
    else this.counters.rejected.malformed++;
  }

  private onData(p: DataPacket): void {
    this.counters.packets++;
    this.lastDataAt = this.lastHeard; // onMessage just read the clock
    this.ackSeqAtData = this.ackSeq;
    // Once it has everything, the sender may unicast the rest to the last
    // receiver: sequence gaps then are not this receiver's loss.
    if (this.state === ReceiverState.RECEIVING || this.state === ReceiverState.JOINING) this.trackLoss(p.seq);
    const c = p.chunk;
    const expected = c < this.n ? this.stored[c] : 0;
    const fragmentSize = this.options.session.fragmentSize;
    // Sizes must agree with the manifest: anything else is not ours.
    if (expected === 0 || p.storedLength !== expected || p.fragments !== fragmentCount(expected, fragmentSize)) {
      this.counters.rejected.badChunk++;
      return;
    }
    const offset = p.fragment * fragmentSize;
    if (p.payload.length !== Math.min(fragmentSize, expected - offset)) {
      this.counters.rejected.badChunk++;
      return;
    }
    const st = this.status[c];
    if (st === DONE || st === QUEUED) {
      this.counters.duplicates++;
      return;
    }
    let part = this.partials.get(c);
    if (part === undefined) {
      if (this.partials.size >= (this.options.maxPartials ?? RECEIVER_DEFAULTS.maxPartials)) this.evictPartial();
      const buf = this.partialPool.pop() ?? Buffer.allocUnsafe(CHUNK.HEADER_SIZE + this.options.manifest.meta.chunkSize);
      part = { buf, got: new Uint8Array(Math.ceil(p.fragments / 8)), count: 0, fragments: p.fragments, lastAt: 0, nackedAt: 0 };
      this.partials.set(c, part);
      this.status[c] = PARTIAL;
    }
    const bit = 1 << (p.fragment & 7);
    if (part.got[p.fragment >> 3] & bit) {
      this.counters.duplicates++;
      return;
    }
    part.got[p.fragment >> 3] |= bit;
    part.count++;
    part.lastAt = performance.now();
    p.payload.copy(part.buf, offset);
    if (part.count === part.fragments) this.assembled(c, part);
  }

  private trackLoss(seq: number): void {
    if (this.firstSeq < 0) {
      this.firstSeq = seq;
      this.maxSeq = seq;
    } else if (((seq - this.maxSeq) >>> 0) < 0x80000000) {
      this.maxSeq = seq;
    }
    const span = ((this.maxSeq - this.firstSeq) >>> 0) + 1;
    this.counters.lost = Math.max(0, span - this.counters.packets);
  }

  private evictPartial(): void {
    let victim = -1;
    let fewest = Infinity;
    for (const [c, part] of this.partials) {
      if (part.count < fewest) {
        fewest = part.count;
        victim = c;
      }
    }
    if (victim >= 0) {
      this.partialPool.push(this.partials.get(victim)!.buf);
      this.partials.delete(victim);
      this.status[victim] = NEEDED;
      this.counters.evictions++;
    }
  }

  private assembled(c: number, part: Partial): void {
    this.partials.delete(c);
    const limit = this.options.queueChunks ?? RECEIVER_DEFAULTS.queueChunks;
    if (this.queue.length >= limit) {
      // The disk is behind: drop it; it is still needed and comes again.
      this.partialPool.push(part.buf);
      this.status[c] = NEEDED;
      this.counters.queueFullDrops++;
      return;
    }
    const { meta } = this.options.manifest;
    const length = chunkLength(c, meta.diskSize, meta.chunkSize);
    const out = this.spare.pop() ?? this.disk!.allocate(meta.chunkSize);
    try {
      const { header } = decodeChunk(part.buf.subarray(0, this.stored[c]), `chunk ${c}`, out);
      // The manifest's hash, not the packet's, decides: a stray chunk never reaches the disk.
      if (header.xxh64 !== this.hashes[c] || header.rawLength !== length) throw new Error('does not match the manifest');
    } catch {
      this.counters.rejected.badChunk++;
      this.status[c] = NEEDED;
      this.spare.push(out);
      return;
    } finally {
      this.partialPool.push(part.buf);
    }
    this.status[c] = QUEUED;
    this.queue.push({ chunk: c, buf: out, length });
    void this.drain();
  }

  // ---- writer ----

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    const { meta } = this.options.manifest;
    try {
      while (this.queue.length > 0 && !this.halted) {
        const item = this.queue[0];
        const t0 = performance.now();
        await this.disk!.write(item.buf, item.chunk * meta.chunkSize, item.length);
        if (this.options.writeLimit) {
          const until = t0 + (item.length / this.options.writeLimit) * 1000;
          while (!this.halted && performance.now() < until) await new Promise((r) => setTimeout(r, Math.min(100, until - performance.now())));
        }
        this.queue.shift();
        this.spare.push(item.buf);
        this.status[item.chunk] = DONE;
        this.done++;
        this.counters.chunksWritten++;
        this.counters.bytesWritten += item.length;
        this.emit('progress', { done: this.done, wanted: this.wanted, bytesWritten: this.counters.bytesWritten });
      }
    } catch (err) {
      this.fail(new ClonecastError(ERR.WRITE_ERROR, `writing ${this.options.target} failed: ${(err as Error).message}`, {}, { cause: err }));
      return;
    } finally {
      this.writing = false;
    }
    if (this.done === this.wanted && this.state === ReceiverState.RECEIVING) void this.complete();
  }

  private async complete(): Promise<void> {
    this.state = ReceiverState.VERIFYING;
    this.report();
    let verification: Verification | undefined;
    try {
      await this.disk!.flush();
      if (this.options.verify !== false) {
        verification = await this.verifyDisk();
        if (verification.chunksBad > 0) {
          const first = verification.bad[0];
          throw new ClonecastError(
            ERR.DAMAGED,
            `verification failed: ${verification.chunksBad} chunk(s) of ${this.options.target} do not read back as written, the first at chunk ${first} (offset ${first * this.options.manifest.meta.chunkSize}); the disk may be failing`,
            { verification },
          );
        }
      }
    } catch (err) {
      this.state = ReceiverState.FAILED;
      this.report();
      this.fail(err);
      return;
    }
    try {
      // Tell the kernel about the new partition table (block devices only).
      await this.disk!.rereadPartitions();
    } catch {
      // A loop device without partition scanning, or a busy disk: the table is written; the kernel learns it at the next open.
    }
    this.state = ReceiverState.DONE;
    this.report();
    // Tell the sender until it acknowledges, for a few report intervals at most.
    const deadline = performance.now() + 20 * RECEIVER_DEFAULTS.reportMs;
    while (!this.acked && performance.now() < deadline) await new Promise((r) => setTimeout(r, RECEIVER_DEFAULTS.reportMs));
    this.finished?.({
      receiver: this.id,
      chunks: this.wanted,
      skipped: this.skipped,
      bytesWritten: this.counters.bytesWritten,
      seconds: (performance.now() - this.started) / 1000,
      verified: this.options.verify !== false,
      verification,
      rttMs: this.srtt,
      counters: this.counters,
    });
  }

  /** Reads every chunk back, checks it against the manifest and digests what it read. */
  private async verifyDisk(): Promise<Verification> {
    const { meta, table } = this.options.manifest;
    const disk = this.disk!;
    const buf = disk.allocate(meta.chunkSize);
    const digest = createHash('sha256');
    const result: Verification = { chunksVerified: 0, bad: [], chunksBad: 0, digest: Buffer.alloc(0) };
    for (let i = 0; i < this.n; i++) {
      const kind = chunkAt(table, i).kind;
      if (kind === ChunkKind.ABSENT) continue;
      const len = chunkLength(i, meta.diskSize, meta.chunkSize);
      await disk.read(buf, i * meta.chunkSize, len);
      const data = buf.subarray(0, len);
      const ok = kind === ChunkKind.ZERO ? isZero(data) : xxh64(data) === this.hashes[i];
      digest.update(sha256(data));
      if (ok) result.chunksVerified++;
      else {
        result.chunksBad++;
        if (result.bad.length < MAX_BAD_LISTED) result.bad.push(i);
      }
    }
    result.digest = digest.digest();
    return result;
  }

  private fail(err: unknown): void {
    this.halted = true;
    const f = this.failed;
    this.failed = undefined;
    this.finished = undefined;
    f?.(err);
  }

  // ---- reports ----

  private onAck(echo: number, state: ReceiverState, reason: DropReason): void {
    const sent = this.sentAt.get(echo);
    if (sent !== undefined) {
      const rtt = performance.now() - sent;
      this.srtt = this.srtt === 0 ? rtt : 0.875 * this.srtt + 0.125 * rtt;
      this.sentAt.delete(echo);
    }
    if (state === ReceiverState.DROPPED) {
      const why = reason === DropReason.NO_PROGRESS ? 'it made no progress for too long' : 'the session ended';
      this.fail(new ClonecastError(ERR.BUSY, `the sender dropped this receiver: ${why}; start it again to resume`, { reason }));
    }
    if (state === ReceiverState.DONE && this.state === ReceiverState.DONE) this.acked = true;
  }

  /**
   * Unicast fallback: the sender's ACKs show it sending (its packet sequence moved on by
   * UNICAST_AFTER_PACKETS) while no data packet reached this receiver for UNICAST_AFTER_MS:
   * the group does not reach it (another subnet, no multicast routing). Sticky once set.
   */
  private wantsUnicast(now: number): boolean {
    if (this.options.unicast === true) this.unicast = true;
    if (!this.unicast && this.state === ReceiverState.RECEIVING && this.done < this.wanted) {
      const silentFor = now - Math.max(this.lastDataAt, this.started);
      const sentSince = (this.ackSeq - this.ackSeqAtData) >>> 0;
      if (silentFor > UNICAST_AFTER_MS && sentSince > UNICAST_AFTER_PACKETS && sentSince < 0x80000000) {
        this.unicast = true;
        this.emit('unicast', { silentMs: Math.round(silentFor), senderPackets: sentSince });
      }
    }
    return this.unicast;
  }

  /** Sends one STATUS: progress, what is still needed, NACKs for stalled partial chunks. */
  private report(): void {
    const now = performance.now();
    if (now - this.lastHeard > (this.options.timeoutMs ?? RECEIVER_DEFAULTS.timeoutMs)) {
      this.fail(new ClonecastError(ERR.NOT_FOUND, `no word from the sender ${this.options.session.sender.address} for ${Math.round((now - this.lastHeard) / 1000)} s; is it still running?`));
      return;
    }
    const paused = this.queue.length >= (this.options.queueChunks ?? RECEIVER_DEFAULTS.queueChunks);
    const nacks = this.state === ReceiverState.RECEIVING && !paused ? this.stalledNacks(now) : [];
    const room = Math.floor((MCAST.MAX_STATUS - statusSize(0, nacks)) / 8);
    let windowStart = 0;
    let windowEnd = this.n;
    let ranges: Range[] = [];
    if (this.state === ReceiverState.RECEIVING && !paused) ({ windowStart, windowEnd, ranges } = this.needRanges(room));
    const seq = this.seq++ >>> 0;
    this.sentAt.set(seq, now);
    if (this.sentAt.size > 64) this.sentAt.delete(this.sentAt.keys().next().value!);
    const packet = encodeStatus({
      session: this.options.session.session,
      seq,
      receiver: this.id,
      state: this.state,
      unicast: this.wantsUnicast(now),
      queueFill: Math.min(255, Math.round((255 * this.queue.length) / (this.options.queueChunks ?? RECEIVER_DEFAULTS.queueChunks))),
      done: this.done,
      wanted: this.wanted,
      received: this.counters.packets,
      lost: this.counters.lost,
      windowStart,
      windowEnd,
      rttMs: this.srtt,
      incarnation: this.incarnation,
      ranges,
      nacks,
    });
    this.counters.statusSent++;
    this.counters.nacksSent += nacks.length;
    this.socket?.send(packet, this.options.session.sender.port, this.options.session.sender.address);
  }

  /** Partial chunks that got nothing for a while: the sender has moved on. */
  private stalledNacks(now: number): Nack[] {
    const delay = Math.max(20, 3 * this.srtt);
    const out: Nack[] = [];
    for (const [chunk, part] of this.partials) {
      if (now - part.lastAt < delay || now - part.nackedAt < 2 * delay) continue;
      const missing = new Uint8Array(part.got.length);
      for (let b = 0; b < missing.length; b++) missing[b] = ~part.got[b] & 0xff;
      const extra = part.fragments % 8;
      if (extra !== 0) missing[missing.length - 1] &= (1 << extra) - 1;
      part.nackedAt = now;
      out.push({ chunk, fragments: part.fragments, missing });
      if (out.length >= RECEIVER_DEFAULTS.maxNacks) break;
    }
    return out;
  }

  /** Needed chunks as ranges, from a rotating cursor, as many as fit. */
  private needRanges(room: number): { windowStart: number; windowEnd: number; ranges: Range[] } {
    if (this.cursor >= this.n) this.cursor = 0;
    const windowStart = this.cursor;
    const ranges: Range[] = [];
    let i = windowStart;
    while (i < this.n) {
      if (this.status[i] !== NEEDED) {
        i++;
        continue;
      }
      if (ranges.length >= room) break;
      let j = i;
      while (j < this.n && this.status[j] === NEEDED) j++;
      ranges.push({ first: i, count: j - i });
      i = j;
    }
    const windowEnd = i;
    this.cursor = windowEnd >= this.n ? 0 : windowEnd;
    return { windowStart, windowEnd, ranges };
  }
}
