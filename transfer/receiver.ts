/**
 * The multicast receiver (docs/protocol.md). Receive loop: decode, validate
 * (sender, session), reassemble (reassembly.ts: sizes against the
 * manifest), check xxh64 against the manifest, hand the chunk to the writer
 * (writer.ts) through a bounded queue that never blocks reception. Every
 * report interval it tells the sender what it still needs. Each chunk is
 * read back soon after it is written (readback.ts), so that the disk is
 * verified shortly after the last write.
 *
 * One way out: run() settles exactly once, and after stop() nothing of the
 * run (timers, a verify in progress, a last report) touches the socket or
 * the disk again.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { chunkLength } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { initHashes } from '../protocol/hash.js';
import { MacKey } from '../protocol/mac.js';
import { decode, DropReason, encodeStatus, MCAST, PacketType, peekVersion, ReceiverState, statusSize, versionMismatch, type DataPacket, type ParityPacket, type Range } from '../protocol/mcast.js';
import type { RemoteInfo, UdpSocket } from '../protocol/transport.js';
import { Disk } from '../native/disk.js';
import { Link } from './link.js';
import { defaultReceiverId } from './session.js';
import { RECEIVER_DEFAULTS, zeroCounters, type ReceiverCounters, type ReceiverOptions, type ReceiverResult } from './receiver-options.js';
import { ChunkCheck } from './chunk-check.js';
import { droppedError, silentSenderError, targetTooSmallError } from './receiver-errors.js';
import { ChunkState, Reassembly } from './reassembly.js';
import { SEAL_OVERHEAD } from './seal.js';
import { listen } from './batch-socket.js';
import { createUdpSocket, growBuffers } from './udp.js';
import { ReadBackStopped, scanExisting, type Verification } from './verifier.js';
import { damagedError, ReadBack, verifyWritten } from './readback.js';
import { Writer } from './writer.js';
import { zeroChunks } from './zero.js';

export { defaultReceiverId, type SessionInfo } from './session.js';
export type { Verification } from './verifier.js';
export { RECEIVER_DEFAULTS, type ReceiverCounters, type ReceiverOptions, type ReceiverResult } from './receiver-options.js';

/** A receiver for one session. */
export class Receiver extends EventEmitter {
  readonly id: number;
  readonly counters: ReceiverCounters = zeroCounters();
  state: ReceiverState = ReceiverState.JOINING;
  private readonly chunks: Reassembly;
  private readonly queueChunks: number;
  private done = 0;
  private skipped = 0;
  private socket: UdpSocket | undefined;
  private disk: Disk | undefined;
  private writer: Writer | undefined;
  private readBack: ReadBack | undefined; // absent with verify: false
  private seq = 0;
  private readonly incarnation = randomBytes(4).readUInt32BE(0);
  private readonly link: Link;
  private lastHeard = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private finished: ((r: ReceiverResult) => void) | undefined;
  private failed: ((e: unknown) => void) | undefined;
  private acked = false;
  private ready = false; // see markReady
  private started = 0;
  private stopError: unknown;
  /** The end-of-run task (flush, verify, final reports); run() waits for it before closing the disk. */
  private completing: Promise<void> | undefined;
  /** Failed or stopped: nothing more is written, read, or sent. */
  private halted = false;
  private readonly dataMac: MacKey | null;
  private readonly check: ChunkCheck;
  private readonly ownMac: MacKey | null;
  /** The version of the last packet refused for speaking another one. */
  private otherVersion: number | undefined;

  constructor(private readonly options: ReceiverOptions) {
    super();
    this.dataMac = options.unauthenticated === true ? null : new MacKey(options.keys.data);
    this.ownMac = options.unauthenticated === true ? null : new MacKey(options.keys.receiver);
    this.check = new ChunkCheck(options.manifest, options.keys.encrypt);
    // Without an id from the server: stable across restarts of the same
    // machine and disk, so that the sender sees a restarted receiver as the one it already knows.
    this.id = options.receiverId ?? defaultReceiverId(options.interfaceAddress, options.target);
    this.chunks = new Reassembly(options.manifest, options.session.fragmentSize, options.maxPartials ?? RECEIVER_DEFAULTS.maxPartials, options.keys.encrypt !== undefined ? SEAL_OVERHEAD : 0);
    this.queueChunks = options.queueChunks ?? RECEIVER_DEFAULTS.queueChunks;
    this.link = new Link(options.unicast === true);
  }

  /** Data is sent to this receiver by unicast (asked for, or the group does not reach it). */
  get unicast(): boolean {
    return this.link.unicast;
  }

  /** Joins the session and writes the image; resolves when the disk is complete and verified. */
  async run(): Promise<ReceiverResult> {
    this.started = performance.now();
    this.check.usable();
    await initHashes();
    const { meta } = this.options.manifest;
    const disk = Disk.open(this.options.target, { write: true, force: this.options.force, createSize: meta.diskSize });
    this.disk = disk;
    this.writer = new Writer(disk, meta.chunkSize, this.queueChunks, {
      written: (chunk, length) => this.written(chunk, length),
      failed: (err) => this.fail(new ClonecastError(ERR.WRITE_ERROR, `writing ${this.options.target} failed: ${(err as Error).message}`, {}, { cause: err })),
      drained: () => this.maybeComplete(),
    }, this.options.writeLimit);
    // Reading back waits while the writer is behind (busy): writes keep the disk, reception never stalls.
    this.readBack = this.options.verify === false ? undefined : new ReadBack(disk, this.options.manifest, {
      busy: () => this.writer!.length * 2 > this.queueChunks,
      stopped: () => this.halted,
      rewrite: (c) => this.refetch(c),
      damaged: (c, v, cause) => this.fail(damagedError(this.options.target, meta.chunkSize, v, cause && { chunk: c, cause })),
    }, { nonce: this.options.nonce });
    try {
      if (disk.size < meta.diskSize) throw targetTooSmallError(this.options.target, disk.size, meta);
      this.markKnown();
      if (this.options.resume) await this.scan();
      await zeroChunks(disk, this.options.manifest, (c) => this.readBack?.push(c), this.options.discard);
      if (this.stopError !== undefined) throw this.stopError;
      return await this.receive();
    } finally {
      this.halted = true;
      this.writer.halt();
      clearInterval(this.timer);
      this.socket?.close();
      // A write or a read-back may still be in flight after a failure or stop(): the fd must outlive it.
      await this.writer.idle();
      await this.readBack?.idle();
      await this.completing;
      disk.close();
    }
  }

  /** Chunks done so far (one byte per chunk, 1: written), to hand to a later run on the same disk. */
  doneMap(): Uint8Array {
    const map = new Uint8Array(this.chunks.chunks);
    for (let i = 0; i < map.length; i++) map[i] = this.chunks.status[i] === ChunkState.DONE ? 1 : 0;
    return map;
  }

  /** Progress so far. */
  progress(): { state: ReceiverState; done: number; wanted: number; skipped: number; ready: boolean } {
    return { state: this.state, done: this.done, wanted: this.chunks.wanted, skipped: this.skipped, ready: this.ready };
  }

  /** Leaves the session: run() rejects with err once no write or read is in flight. Safe at any time, also while verifying. */
  stop(err: unknown): void {
    this.stopError ??= err;
    this.fail(err);
  }

  private markKnown(): void {
    const known = this.options.known;
    if (known === undefined) return;
    if (known.length !== this.chunks.chunks) throw new RangeError(`known map has ${known.length} entries, the image ${this.chunks.chunks} chunks`);
    for (let i = 0; i < known.length; i++) if (known[i] !== 0 && this.chunks.status[i] === ChunkState.NEEDED) this.skip(i);
  }

  /** Chunk i is on the disk already: known from an earlier run (read back like any other), or found good by a scan that read data (verified). */
  private skip(i: number, data?: Buffer): void {
    this.chunks.status[i] = ChunkState.DONE;
    this.done++;
    this.skipped++;
    if (data !== undefined) this.readBack?.accept(i, data);
    else this.readBack?.push(i);
  }

  private async scan(): Promise<void> {
    const status = this.chunks.status;
    await scanExisting(this.disk!, this.options.manifest, this.chunks.hashes, (i) => status[i] === ChunkState.NEEDED, (i, data) => this.skip(i, data), () => this.stopError !== undefined);
    this.emit('resume', { skipped: this.skipped, wanted: this.chunks.wanted });
  }

  private async receive(): Promise<ReceiverResult> {
    const { session, interfaceAddress } = this.options;
    const socket = (this.options.createSocket ?? createUdpSocket)();
    this.socket = socket;
    // In batches where the socket can (DATA MACs checked in the same pass), else a datagram at a time.
    const verify = this.dataMac === null ? undefined : { key: this.options.keys.data, types: [PacketType.DATA, PacketType.PARITY] };
    listen(socket, (msg, rinfo, macChecked) => this.onMessage(msg, rinfo, macChecked), verify, () => this.counters.rejected.malformed++);
    // A socket error after setup ends the run through the one error path, never as an uncaught 'error'.
    socket.on('error', (err) => this.fail(err));
    await new Promise<void>((resolve) => socket.bind(session.port, undefined, resolve));
    socket.addMembership(session.group, interfaceAddress);
    growBuffers(socket);
    this.state = this.done === this.chunks.wanted ? ReceiverState.VERIFYING : ReceiverState.RECEIVING;
    const result = new Promise<ReceiverResult>((resolve, reject) => {
      this.finished = resolve;
      this.failed = reject;
    });
    if (this.halted) this.fail(this.stopError); // stopped while the socket was being set up
    this.lastHeard = performance.now(); // scanning and zeroing the disk took time, not the sender
    this.timer = setInterval(() => this.report(), RECEIVER_DEFAULTS.reportMs);
    this.report();
    if (this.done === this.chunks.wanted) this.startCompletion();
    return result;
  }

  // ---- receive loop ----

  /** macChecked: the socket found msg's MAC good under the data key (DATA and PARITY). */
  private onMessage(msg: Buffer, rinfo: RemoteInfo, macChecked: boolean): void {
    if (this.halted) return;
    const p = decode(msg);
    if (p === null) {
      this.rejectUndecoded(msg, rinfo);
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
    // The MAC before anything else: DATA under the session's key, an ACK under this receiver's own.
    const key = p.type === PacketType.DATA || p.type === PacketType.PARITY ? this.dataMac : p.type === PacketType.ACK && p.receiver === this.id ? this.ownMac : undefined;
    if (key === undefined) {
      this.counters.rejected.malformed++;
      return;
    }
    if (key !== null && !(macChecked && key === this.dataMac) && !key.verify(msg)) {
      this.counters.rejected.badMac++;
      return;
    }
    this.lastHeard = performance.now();
    if (p.type === PacketType.DATA || p.type === PacketType.PARITY) this.onData(p);
    else if (p.type === PacketType.ACK) {
      this.link.ack(p.seq, p.echo, this.lastHeard);
      this.markReady();
      this.onAck(p.state, p.reason);
    }
  }

  /**
   * A datagram that does not decode: counted; one of this protocol in another version
   * from the sender is said once (the 'version' event) and named if the run times out.
   */
  private rejectUndecoded(msg: Buffer, rinfo: RemoteInfo): void {
    const version = peekVersion(msg);
    if (version === null || version === MCAST.VERSION || rinfo.address !== this.options.session.sender.address) {
      this.counters.rejected.malformed++;
      return;
    }
    if (this.counters.rejected.version++ === 0) this.emit('version', versionMismatch(version, 'sender', 'agent'));
    this.otherVersion = version;
  }

  private onData(p: DataPacket | ParityPacket): void {
    this.counters.packets++;
    // Once it has everything, the sender may unicast the rest to the last
    // receiver: sequence gaps then are not this receiver's loss.
    const receiving = this.state === ReceiverState.RECEIVING || this.state === ReceiverState.JOINING;
    this.link.data(p.seq, this.lastHeard, this.counters.packets, receiving); // onMessage just read the clock
    this.counters.lost = this.link.lost;
    if (p.type === PacketType.PARITY) this.counters.parity++;
    const got = p.type === PacketType.DATA ? this.chunks.accept(p, this.lastHeard) : this.chunks.acceptParity(p, this.lastHeard);
    this.counters.rebuilt = this.chunks.rebuilt;
    if (got.kind === 'bad') this.counters.rejected.badChunk++;
    else if (got.kind === 'duplicate') this.counters.duplicates++;
    else if (got.kind === 'assembled') this.assembled(got.chunk, got.stored, got.buf);
    this.counters.evictions = this.chunks.evictions;
  }

  private assembled(c: number, stored: Buffer, buf: Buffer): void {
    const writer = this.writer!;
    const status = this.chunks.status;
    if (writer.full) {
      // The disk is behind: drop it; it is still needed and comes again.
      this.chunks.recycle(buf);
      status[c] = ChunkState.NEEDED;
      this.counters.queueFullDrops++;
      return;
    }
    const { meta } = this.options.manifest;
    const length = chunkLength(c, meta.diskSize, meta.chunkSize);
    const out = writer.buffer();
    try {
      this.check.decode(c, stored, out, this.chunks.hashes[c]); // a chunk failing it never reaches the disk
    } catch {
      this.counters.rejected.badChunk++;
      status[c] = ChunkState.NEEDED;
      writer.giveBack(out);
      return;
    } finally {
      this.chunks.recycle(buf);
    }
    status[c] = ChunkState.QUEUED;
    writer.push({ chunk: c, buf: out, length });
  }

  private written(chunk: number, length: number): void {
    this.chunks.status[chunk] = ChunkState.DONE;
    this.done++;
    this.counters.chunksWritten++;
    this.counters.bytesWritten += length;
    this.emit('progress', { chunk, done: this.done, wanted: this.chunks.wanted, bytesWritten: this.counters.bytesWritten });
    this.readBack?.push(chunk);
  }

  /** Chunk c read back wrong: it is needed again (fetched, checked and written again, then read back again). */
  private refetch(c: number): void {
    if (this.halted || this.chunks.status[c] !== ChunkState.DONE) return;
    this.chunks.status[c] = ChunkState.NEEDED;
    this.done--;
    this.counters.rewritten++;
  }

  // ---- the end: flush, read back, tell the sender ----

  private maybeComplete(): void {
    if (!this.halted && this.done === this.chunks.wanted && this.state === ReceiverState.RECEIVING) this.startCompletion();
  }

  private startCompletion(): void {
    if (this.completing !== undefined) return;
    // Whatever happens in it ends in fail() or finished(), never in an unhandled rejection.
    this.completing = this.complete().catch((err) => this.fail(err));
  }

  private async complete(): Promise<void> {
    this.state = ReceiverState.VERIFYING;
    this.emit('verifying');
    this.report();
    let verification: Verification | undefined;
    try {
      await this.disk!.flush();
      if (this.readBack !== undefined) {
        const { manifest, target, nonce, finalVerify } = this.options;
        verification = await verifyWritten(this.readBack, { disk: this.disk!, manifest, target, nonce, finalVerify, stopped: () => this.halted });
        if (verification === undefined && !this.halted) {
          // A chunk read back wrong: receive it again, then come back here.
          this.state = ReceiverState.RECEIVING;
          this.completing = undefined;
          this.report();
          return;
        }
      }
    } catch (err) {
      if (this.halted || err instanceof ReadBackStopped) return; // stopped: run() has settled already
      this.state = ReceiverState.FAILED;
      this.report();
      this.fail(err);
      return;
    }
    if (this.halted) return;
    try {
      // Tell the kernel about the new partition table (block devices only).
      await this.disk!.rereadPartitions();
    } catch {
      // A loop device without partition scanning, or a busy disk: the table is written; the kernel learns it at the next open.
    }
    if (this.halted) return;
    this.state = ReceiverState.DONE;
    this.report();
    // Tell the sender until it acknowledges, for a few report intervals at most.
    const deadline = performance.now() + 20 * RECEIVER_DEFAULTS.reportMs;
    while (!this.acked && !this.halted && performance.now() < deadline) await new Promise((r) => setTimeout(r, RECEIVER_DEFAULTS.reportMs));
    this.finished?.({
      receiver: this.id,
      chunks: this.chunks.wanted,
      skipped: this.skipped,
      bytesWritten: this.counters.bytesWritten,
      seconds: (performance.now() - this.started) / 1000,
      verified: this.options.verify !== false,
      verification,
      rttMs: this.link.srtt,
      counters: this.counters,
    });
  }

  private fail(err: unknown): void {
    this.halted = true;
    this.writer?.halt();
    clearInterval(this.timer);
    const f = this.failed;
    this.failed = undefined;
    this.finished = undefined;
    f?.(err);
  }

  // ---- reports ----

  private onAck(state: ReceiverState, reason: DropReason): void {
    if (state === ReceiverState.DROPPED) this.fail(droppedError(reason));
    if (state === ReceiverState.DONE && this.state === ReceiverState.DONE) this.acked = true;
  }

  /** 'ready', once: the sender answered (knows our needs), or two STATUS went out (receivers sharing a host and port share ACKs). */
  private markReady(): void {
    if (this.ready) return;
    this.ready = true;
    this.emit('ready');
  }

  /** Sends one STATUS: progress, what is still needed, NACKs for stalled partial chunks. Never after the run ended. */
  private report(): void {
    // A FAILED report still goes out once during the fail path below; after that the socket may be closed.
    if (this.halted || this.socket === undefined) return;
    const now = performance.now();
    if (now - this.lastHeard > (this.options.timeoutMs ?? RECEIVER_DEFAULTS.timeoutMs)) {
      this.fail(silentSenderError(this.options.session.sender.address, now - this.lastHeard, this.otherVersion));
      return;
    }
    const writer = this.writer!;
    const paused = writer.full;
    const budget = MCAST.MAX_STATUS - statusSize(8, []);
    const repairs = this.state === ReceiverState.RECEIVING && !paused ? this.chunks.stalledRepairs(now, this.link.srtt, RECEIVER_DEFAULTS.maxNacks, budget) : [];
    const room = Math.floor((MCAST.MAX_STATUS - statusSize(0, repairs)) / 8);
    let windowStart = 0;
    let windowEnd = this.chunks.chunks;
    let ranges: Range[] = [];
    if (this.state === ReceiverState.RECEIVING && !paused) ({ windowStart, windowEnd, ranges } = this.chunks.needRanges(room));
    const seq = this.seq++ >>> 0;
    this.link.sent(seq, now);
    const fallback = this.link.checkUnicast(now, this.started, this.state === ReceiverState.RECEIVING && this.done < this.chunks.wanted);
    if (fallback !== undefined) this.emit('unicast', fallback);
    const packet = encodeStatus({
      session: this.options.session.session,
      seq,
      receiver: this.id,
      state: this.state,
      unicast: this.link.unicast,
      queueFill: writer.fill,
      done: this.done,
      wanted: this.chunks.wanted,
      received: this.counters.packets,
      lost: this.counters.lost,
      windowStart,
      windowEnd,
      rttMs: this.link.srtt,
      incarnation: this.incarnation,
      ranges,
      repairs,
    }, this.ownMac);
    this.counters.statusSent++;
    this.counters.nacksSent += repairs.length;
    try {
      this.socket.send(packet, this.options.session.sender.port, this.options.session.sender.address);
      if (this.counters.statusSent >= 2) this.markReady();
    } catch (err) {
      // The socket went away under us (closed): the run ends through fail(), not a throw out of a timer.
      this.fail(err);
    }
  }
}
