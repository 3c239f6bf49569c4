/**
 * The multicast sender (docs/protocol.md). Serve loop: receive a STATUS,
 * decode, validate, update what that receiver needs, answer with an ACK.
 * Send loop: pick the repair or chunk most needed, cut it into fragments,
 * pace them out at the current rate.
 */
import { EventEmitter } from 'node:events';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../../protocol/manifest.js';
import { CHUNK } from '../../protocol/chunk.js';
import {
  bitSet,
  decode,
  DataFlag,
  DropReason,
  encodeAck,
  encodeData,
  fragmentCount,
  MCAST,
  PacketType,
  ReceiverState,
  type StatusPacket,
} from '../../protocol/mcast.js';
import type { CreateSocket, RemoteInfo, UdpSocket } from '../../protocol/transport.js';
import { createUdpSocket, growBuffers } from './udp.js';

/** Defaults of SenderOptions. */
export const SENDER_DEFAULTS = Object.freeze({
  rateMbit: 1000,
  /** The rate never falls below this fraction of the maximum. */
  minRateFraction: 1 / 16,
  fragmentSize: MCAST.DEFAULT_FRAGMENT,
  /** A receiver that writes nothing for this long is dropped. */
  dropAfterMs: 30_000,
  /** Pacing tick; a burst is what one tick's tokens allow, at most burstPackets. */
  tickMs: 1,
  burstPackets: 64,
  /** Stored chunks kept in memory for repairs and late joiners. */
  cacheChunks: 48,
  ttl: 1,
  /** Loss above this (worst receiver, last interval) cuts the rate by RATE_DECREASE. */
  lossHigh: 0.25,
  /** Loss below this lets the rate grow by RATE_STEP of the maximum per interval. */
  lossLow: 0.05,
  rateIntervalMs: 250,
});

const RATE_DECREASE = 0.7;
const RATE_STEP = 0.05;
/** A chunk just sent is not sent again for this many round-trip times, whatever stale reports say. */
const RESEND_GUARD_RTTS = 3;
const MIN_GUARD_MS = 30;

/** How to run a sender. */
export interface SenderOptions {
  manifest: Manifest;
  /** Returns chunk i's stored form (header + payload, no padding). */
  loadChunk: (index: number) => Promise<Buffer>;
  group: string;
  port: number;
  /** Local IPv4 address to send from (picks the interface). */
  address: string;
  session?: number;
  /** Start sending once this many receivers have joined (default 1). */
  waitFor?: number;
  /** ...or once this long has passed since the first one joined (default: wait for all). */
  waitMs?: number;
  /** Wait for release() whatever waitFor and waitMs say (a server applies its own start rule). */
  hold?: boolean;
  rateMbit?: number;
  fragmentSize?: number;
  dropAfterMs?: number;
  cacheChunks?: number;
  ttl?: number;
  /** With one receiver left needing data, send to it by unicast (default true). */
  unicastSingle?: boolean;
  createSocket?: CreateSocket;
}

/** What the sender knows about one receiver. */
export interface ReceiverStats {
  id: number;
  address: string;
  state: ReceiverState;
  reason: DropReason;
  done: number;
  wanted: number;
  received: number;
  lost: number;
  /** Loss over the last report interval, 0-1. */
  loss: number;
  nacks: number;
  /** Chunks written per second, recent. */
  chunksPerSecond: number;
  rttMs: number;
  joinedAt: number;
  lastSeen: number;
  lastProgress: number;
}

interface Peer extends ReceiverStats {
  port: number;
  /** Multicast does not reach it: it gets copies of its data by unicast. */
  unicast: boolean;
  /** Bits set in need. */
  needCount: number;
  incarnation: number;
  need: Uint8Array; // bit per chunk: the sender believes this receiver needs it
  lastSeq: number;
  intervalReceived: number;
  intervalLost: number;
}

interface Outgoing {
  chunk: number;
  data: Buffer;
  fragments: number;
  /** Fragment indexes still to send, in order. */
  queue: number[];
  repair: boolean;
  /** Receivers the group does not reach that wanted this chunk: they get unicast copies. */
  unicastTo: Peer[];
}

/** Counters for the dashboard and tests. */
export interface SenderCounters {
  /** Seconds from the first to the last data packet. */
  sendingSeconds: number;
  packetsSent: number;
  bytesSent: number;
  chunksSent: number;
  repairPackets: number;
  /** Data packets sent by unicast to a sole receiver. */
  unicastPackets: number;
  statusReceived: number;
  dropped: { malformed: number; otherSession: number; unexpected: number };
  sendErrors: number;
}

/** A multicast sender for one image version. */
export class Sender extends EventEmitter {
  readonly session: number;
  readonly counters: SenderCounters = {
    sendingSeconds: 0,
    packetsSent: 0,
    bytesSent: 0,
    chunksSent: 0,
    repairPackets: 0,
    unicastPackets: 0,
    statusReceived: 0,
    dropped: { malformed: 0, otherSession: 0, unexpected: 0 },
    sendErrors: 0,
  };
  /** Current pacing rate, bytes per second. */
  rate: number;
  private readonly maxRate: number;
  private readonly n: number;
  private readonly kinds: Uint8Array;
  private readonly demand: Uint16Array;
  /** Sum of demand[], so that an idle sender does not scan the table every tick. */
  private totalDemand = 0;
  private readonly lastSent: Float64Array;
  private readonly peers = new Map<number, Peer>();
  private readonly repairs = new Map<number, Uint8Array>();
  /** Repairs asked for by receivers the group does not reach. */
  private readonly unicastRepairs = new Map<number, Set<Peer>>();
  private readonly cache = new Map<number, Buffer>();
  private readonly fragmentSize: number;
  private socket: UdpSocket | undefined;
  private seq = 0;
  private tokens = 0;
  private lastTick = 0;
  private timer: NodeJS.Timeout | undefined;
  private rateTimer: NodeJS.Timeout | undefined;
  private current: Outgoing | undefined;
  private prefetched: Outgoing | undefined;
  private next: Promise<Outgoing | undefined> | undefined;
  private cursor = 0;
  private stopped = false;
  private firstJoin = 0;
  private firstSend = 0;
  /** A send failed locally (ENOBUFS) since the last rate adjustment. */
  private localCongestion = false;
  private started = false;
  private released = false;

  constructor(private readonly options: SenderOptions) {
    super();
    this.session = options.session ?? ((Math.random() * 0xffffffff) >>> 0);
    this.n = tableLength(options.manifest.table);
    this.kinds = new Uint8Array(this.n);
    for (let i = 0; i < this.n; i++) this.kinds[i] = chunkAt(options.manifest.table, i).kind;
    this.demand = new Uint16Array(this.n);
    this.lastSent = new Float64Array(this.n);
    this.fragmentSize = options.fragmentSize ?? SENDER_DEFAULTS.fragmentSize;
    if (this.fragmentSize < 256 || this.fragmentSize > MCAST.MAX_FRAGMENT) throw new RangeError(`fragment size must be 256 to ${MCAST.MAX_FRAGMENT}`);
    this.maxRate = ((options.rateMbit ?? SENDER_DEFAULTS.rateMbit) * 1e6) / 8;
    this.rate = this.maxRate;
  }

  /** Binds the socket and starts the serve and send loops; resolves with the local port. */
  async start(): Promise<number> {
    const socket = (this.options.createSocket ?? createUdpSocket)();
    this.socket = socket;
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    socket.on('error', (err) => this.emit('error', err));
    await new Promise<void>((resolve) => socket.bind(0, this.options.address, resolve));
    socket.setMulticastInterface(this.options.address);
    socket.setMulticastTTL(this.options.ttl ?? SENDER_DEFAULTS.ttl);
    socket.setMulticastLoopback(true);
    growBuffers(socket);
    this.lastTick = performance.now();
    this.timer = setInterval(() => this.tick(), SENDER_DEFAULTS.tickMs);
    this.rateTimer = setInterval(() => this.adjustRate(), SENDER_DEFAULTS.rateIntervalMs);
    return socket.address().port;
  }

  /** Starts sending now (with hold: the caller's start rule is met). */
  release(): void {
    this.released = true;
  }

  /** Stops sending and closes the socket. Receivers still running see no more data. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.rateTimer);
    this.socket?.close();
  }

  /** Statistics of every receiver seen. */
  receivers(): ReceiverStats[] {
    return [...this.peers.values()].map(({ need: _n, lastSeq: _s, intervalReceived: _r, intervalLost: _l, port: _p, needCount: _c, incarnation: _i, unicast: _u, ...stats }) => ({ ...stats }));
  }

  /** Chunks that some active receiver needs, as the sender believes. */
  pendingDemand(): number {
    return this.totalDemand;
  }

  // ---- serve loop: STATUS in, ACK out ----

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    const p = decode(msg);
    if (p === null) {
      this.counters.dropped.malformed++;
      return;
    }
    if (p.session !== this.session) {
      this.counters.dropped.otherSession++;
      return;
    }
    if (p.type !== PacketType.STATUS) {
      this.counters.dropped.unexpected++;
      return;
    }
    this.counters.statusReceived++;
    const peer = this.peerFor(p, rinfo);
    // A report older than one already applied is stale: answer it, change nothing.
    if (peer.lastSeq < 0 || seqNewer(p.seq, peer.lastSeq)) this.apply(peer, p);
    this.reply(peer, p.seq);
  }

  private peerFor(p: StatusPacket, rinfo: RemoteInfo): Peer {
    let peer = this.peers.get(p.receiver);
    const now = performance.now();
    if (peer === undefined) {
      peer = {
        id: p.receiver,
        address: rinfo.address,
        port: rinfo.port,
        state: ReceiverState.JOINING,
        reason: DropReason.NONE,
        done: p.done,
        wanted: p.wanted,
        received: 0,
        lost: 0,
        loss: 0,
        nacks: 0,
        chunksPerSecond: 0,
        rttMs: 0,
        joinedAt: now,
        lastSeen: now,
        lastProgress: now,
        need: new Uint8Array(Math.ceil(this.n / 8)),
        unicast: false,
        lastSeq: -1,
        needCount: 0,
        incarnation: p.incarnation,
        intervalReceived: 0,
        intervalLost: 0,
      };
      this.peers.set(p.receiver, peer);
      if (this.firstJoin === 0) this.firstJoin = now;
      this.emit('join', { ...peer });
    }
    // A receiver that restarted keeps its id but may come from a new port,
    // numbers its reports from scratch, and is welcome back even if dropped.
    peer.address = rinfo.address;
    peer.port = rinfo.port;
    if (peer.incarnation !== p.incarnation) {
      peer.incarnation = p.incarnation;
      peer.lastSeq = -1;
      peer.lastProgress = now;
      peer.received = 0;
      peer.lost = 0;
      if (peer.state === ReceiverState.DROPPED) {
        peer.state = ReceiverState.JOINING;
        peer.reason = DropReason.NONE;
        this.emit('state', { ...peer });
      }
    }
    return peer;
  }

  private apply(peer: Peer, p: StatusPacket): void {
    const now = performance.now();
    peer.lastSeq = p.seq;
    peer.lastSeen = now;
    if (peer.state === ReceiverState.DROPPED) return;
    if (p.unicast === true && !peer.unicast) {
      peer.unicast = true;
      this.emit('unicast', { ...peer });
    }
    if (p.done > peer.done) {
      const dt = (now - peer.lastProgress) / 1000;
      peer.chunksPerSecond = dt > 0 ? (p.done - peer.done) / dt : 0;
      peer.lastProgress = now;
    } else if (p.done < peer.done) {
      peer.lastProgress = now; // restarted: count from here
    }
    peer.intervalReceived += Math.max(0, p.received - peer.received);
    peer.intervalLost += Math.max(0, p.lost - peer.lost);
    peer.done = p.done;
    peer.wanted = p.wanted;
    peer.received = p.received;
    peer.lost = p.lost;
    peer.rttMs = p.rttMs;
    const state = p.state === ReceiverState.JOINING ? ReceiverState.RECEIVING : p.state;
    if (state !== peer.state) {
      peer.state = state;
      this.emit('state', { ...peer });
    }
    if (state === ReceiverState.DONE || state === ReceiverState.FAILED) {
      this.setNeeds(peer, 0, this.n, []);
    } else {
      this.setNeeds(peer, p.windowStart, Math.min(p.windowEnd, this.n), p.ranges);
      for (const k of p.nacks) this.addRepair(peer, k.chunk, k.fragments, k.missing);
    }
    this.emit('status', { ...peer });
  }

  // The ranges are all this receiver needs inside [start, end): clear the
  // window, then set the ranges, keeping demand counts in step.
  private setNeeds(peer: Peer, start: number, end: number, ranges: { first: number; count: number }[]): void {
    const guard = this.guardMs(peer);
    const now = performance.now();
    // Clearing costs a pass over the window; skip it when nothing is set.
    if (peer.needCount > 0) for (let i = start; i < end; i++) this.setNeed(peer, i, false);
    for (const r of ranges) {
      for (let i = r.first; i < Math.min(r.first + r.count, end); i++) {
        // Just sent: the report was probably written before it arrived.
        if (this.kinds[i] === ChunkKind.DATA && now - this.lastSent[i] > guard) this.setNeed(peer, i, true);
      }
    }
  }

  private setNeed(peer: Peer, i: number, on: boolean): void {
    const bit = 1 << (i & 7);
    const has = (peer.need[i >> 3] & bit) !== 0;
    if (has === on) return;
    if (on) {
      peer.need[i >> 3] |= bit;
      this.demand[i]++;
      this.totalDemand++;
      peer.needCount++;
    } else {
      peer.need[i >> 3] &= ~bit;
      this.demand[i]--;
      this.totalDemand--;
      peer.needCount--;
    }
  }

  private addRepair(peer: Peer, chunk: number, fragments: number, missing: Uint8Array): void {
    if (chunk >= this.n || this.kinds[chunk] !== ChunkKind.DATA) return;
    const expected = fragmentCount(CHUNK.HEADER_SIZE + chunkAt(this.options.manifest.table, chunk).storedLength, this.fragmentSize);
    if (fragments !== expected) return;
    peer.nacks++;
    const bits = this.repairs.get(chunk) ?? new Uint8Array(Math.ceil(fragments / 8));
    // The union of everyone's missing fragments: one repair serves them all.
    for (let b = 0; b < bits.length; b++) bits[b] |= missing[b];
    this.repairs.set(chunk, bits);
    if (peer.unicast) {
      const set = this.unicastRepairs.get(chunk) ?? new Set<Peer>();
      set.add(peer);
      this.unicastRepairs.set(chunk, set);
    }
  }

  private reply(peer: Peer, echo: number): void {
    const ack = encodeAck({
      session: this.session,
      seq: this.seq,
      receiver: peer.id,
      echo,
      state: peer.state,
      reason: peer.reason,
      rateKiB: Math.round(this.rate / 1024),
    });
    this.socket?.send(ack, peer.port, peer.address);
  }

  private guardMs(peer: Peer): number {
    return Math.max(MIN_GUARD_MS, peer.rttMs * RESEND_GUARD_RTTS);
  }

  // ---- send loop ----

  private tick(): void {
    if (this.stopped) return;
    const now = performance.now();
    this.tokens = Math.min(this.tokens + ((now - this.lastTick) / 1000) * this.rate, this.burstBytes());
    this.lastTick = now;
    this.dropSilent(now);
    if (!this.started && !this.ready(now)) return;
    let budget = this.tokens;
    // One receiver left: unicast, so that switches without IGMP snooping do
    // not flood the group to every port (a single restore, a remote site).
    const only = this.options.unicastSingle === false ? undefined : this.soleReceiver();
    const dest = only !== undefined ? { port: only.port, address: only.address } : { port: this.options.port, address: this.options.group };
    const sentBefore = this.counters.packetsSent;
    while (budget >= MCAST.DATA_HEADER + this.fragmentSize) {
      if (this.current === undefined || this.current.queue.length === 0) {
        // The next chunk was read ahead while this one went out.
        this.current = this.prefetched;
        this.prefetched = undefined;
        this.prepareNext();
        if (this.current === undefined) break; // still loading: send it on a later tick
      }
      const out = this.current;
      const f = out.queue.shift()!;
      budget -= this.sendFragment(out, f, dest);
      if (only !== undefined) this.counters.unicastPackets++;
      else {
        // Receivers the group does not reach get their own copy of what they need.
        for (const peer of out.unicastTo) {
          budget -= this.sendFragment(out, f, { port: peer.port, address: peer.address });
          this.counters.unicastPackets++;
        }
      }
      if (out.queue.length === 0 && !out.repair) this.counters.chunksSent++;
    }
    this.tokens = budget;
    if (this.counters.packetsSent > sentBefore) {
      if (this.firstSend === 0) this.firstSend = now;
      this.counters.sendingSeconds = (now - this.firstSend) / 1000;
    }
  }

  // The start rule: enough receivers joined, or waited long enough since the first.
  private ready(now: number): boolean {
    if (this.options.hold && !this.released) return false;
    const joined = this.peers.size;
    const want = this.options.waitFor ?? 1;
    const waited = this.firstJoin > 0 && this.options.waitMs !== undefined && now - this.firstJoin >= this.options.waitMs;
    if (this.released || joined >= want || waited) {
      this.started = true;
      // Waiting for the others is not a lack of progress.
      for (const peer of this.peers.values()) peer.lastProgress = now;
      this.emit('start', { receivers: joined });
    }
    return this.started;
  }

  private burstBytes(): number {
    // Four ticks of tokens at the current rate (a late timer does not lose
    // sending time), capped at burstPackets, or at
    // 1.5 ticks when the rate is so high that burstPackets would cap it: a
    // burst then lasts no longer than the tick that paces it.
    const pkt = MCAST.DATA_HEADER + this.fragmentSize;
    const perTick = (this.rate * SENDER_DEFAULTS.tickMs) / 1000;
    return Math.max(2 * pkt, Math.min(4 * perTick, Math.max(SENDER_DEFAULTS.burstPackets * pkt, 1.5 * perTick)) + pkt);
  }

  private sendFragment(out: Outgoing, f: number, dest: { port: number; address: string }): number {
    const start = f * this.fragmentSize;
    const payload = out.data.subarray(start, Math.min(start + this.fragmentSize, out.data.length));
    const packet = Buffer.allocUnsafe(MCAST.DATA_HEADER + payload.length);
    encodeData(packet, {
      session: this.session,
      seq: this.seq++ >>> 0,
      chunk: out.chunk,
      fragment: f,
      fragments: out.fragments,
      storedLength: out.data.length,
      flags: out.repair ? DataFlag.REPAIR : 0,
      payload,
    });
    this.seq >>>= 0;
    this.counters.packetsSent++;
    this.counters.bytesSent += packet.length;
    if (out.repair) this.counters.repairPackets++;
    this.socket!.send(packet, dest.port, dest.address, (err) => {
      if (err) {
        // ENOBUFS/EAGAIN: the local queue is full. Congestion, handled by the
        // rate rule once per interval (not once per failed packet).
        this.counters.sendErrors++;
        this.localCongestion = true;
      }
    });
    return packet.length;
  }

  /** The one receiver still receiving, if there is exactly one. */
  private soleReceiver(): Peer | undefined {
    let only: Peer | undefined;
    for (const peer of this.peers.values()) {
      if (peer.state === ReceiverState.JOINING || peer.state === ReceiverState.RECEIVING) {
        if (only !== undefined) return undefined;
        only = peer;
      }
    }
    return only;
  }

  private prepareNext(): void {
    if (this.next !== undefined || this.prefetched !== undefined) return;
    const pick = this.pick();
    if (pick === undefined) return;
    this.next = this.outgoing(pick.chunk, pick.fragments, pick.unicastTo)
      .catch((err) => {
        this.emit('error', err);
        return undefined;
      })
      .then((out) => {
        this.next = undefined;
        if (out === undefined || this.stopped) return out;
        if (this.current === undefined || this.current.queue.length === 0) this.current = out;
        else this.prefetched = out;
        this.prepareNext(); // read the one after ahead too
        return out;
      });
  }

  /** Repairs first (the union of NACKed fragments), then the chunk most receivers need. */
  private pick(): { chunk: number; fragments?: Uint8Array; unicastTo: Peer[] } | undefined {
    for (const [chunk, bits] of this.repairs) {
      this.repairs.delete(chunk);
      const unicastTo = [...(this.unicastRepairs.get(chunk) ?? [])];
      this.unicastRepairs.delete(chunk);
      return { chunk, fragments: bits, unicastTo };
    }
    if (this.totalDemand === 0) return undefined;
    let best = -1;
    let bestDemand = 0;
    // Scan from a moving cursor; take the most needed chunk among the first
    // ones found, so that work spreads over the disk in order.
    const window = 256;
    let seen = 0;
    for (let k = 0; k < this.n; k++) {
      const i = (this.cursor + k) % this.n;
      const d = this.demand[i];
      if (d === 0) continue;
      if (d > bestDemand) {
        best = i;
        bestDemand = d;
      }
      if (++seen >= window) break;
    }
    if (best < 0) return undefined;
    this.cursor = (best + 1) % this.n;
    // Assume it is delivered; a receiver that loses it asks again.
    const unicastTo: Peer[] = [];
    for (const peer of this.peers.values()) {
      if (peer.unicast && (peer.need[best >> 3] & (1 << (best & 7))) !== 0) unicastTo.push(peer);
      this.setNeed(peer, best, false);
    }
    this.lastSent[best] = performance.now();
    return { chunk: best, unicastTo };
  }

  private async outgoing(chunk: number, fragments?: Uint8Array, unicastTo: Peer[] = []): Promise<Outgoing> {
    let data = this.cache.get(chunk);
    if (data === undefined) {
      data = await this.options.loadChunk(chunk);
      this.cache.set(chunk, data);
      const limit = this.options.cacheChunks ?? SENDER_DEFAULTS.cacheChunks;
      // Map iteration order is insertion order: evict the oldest.
      while (this.cache.size > limit) this.cache.delete(this.cache.keys().next().value!);
    } else {
      this.cache.delete(chunk);
      this.cache.set(chunk, data);
    }
    const count = fragmentCount(data.length, this.fragmentSize);
    const queue: number[] = [];
    for (let f = 0; f < count; f++) if (fragments === undefined || bitSet(fragments, f)) queue.push(f);
    return { chunk, data, fragments: count, queue, repair: fragments !== undefined, unicastTo };
  }

  // ---- rate control and liveness ----

  private minRate(): number {
    return this.maxRate * SENDER_DEFAULTS.minRateFraction;
  }

  private adjustRate(): void {
    let worst = 0;
    for (const peer of this.peers.values()) {
      const total = peer.intervalReceived + peer.intervalLost;
      peer.loss = total > 20 ? peer.intervalLost / total : peer.loss;
      peer.intervalReceived = 0;
      peer.intervalLost = 0;
      if (peer.state === ReceiverState.RECEIVING && total > 20) worst = Math.max(worst, peer.loss);
    }
    const congested = worst > SENDER_DEFAULTS.lossHigh || this.localCongestion;
    this.localCongestion = false;
    if (congested) this.rate = Math.max(this.rate * RATE_DECREASE, this.minRate());
    else if (worst < SENDER_DEFAULTS.lossLow) this.rate = Math.min(this.rate + this.maxRate * RATE_STEP, this.maxRate);
  }

  private dropSilent(now: number): void {
    const limit = this.options.dropAfterMs ?? SENDER_DEFAULTS.dropAfterMs;
    for (const peer of this.peers.values()) {
      if (peer.state !== ReceiverState.RECEIVING && peer.state !== ReceiverState.JOINING && peer.state !== ReceiverState.VERIFYING) continue;
      if (this.started && peer.state !== ReceiverState.VERIFYING && now - peer.lastProgress > limit) this.drop(peer, DropReason.NO_PROGRESS);
      else if (now - peer.lastSeen > limit) this.drop(peer, DropReason.NO_PROGRESS);
    }
  }

  private drop(peer: Peer, reason: DropReason): void {
    peer.state = ReceiverState.DROPPED;
    peer.reason = reason;
    this.setNeeds(peer, 0, this.n, []);
    this.emit('state', { ...peer });
  }
}

/** True if sequence a is after b, with 32-bit wrap-around (RFC 1982 style). */
export function seqNewer(a: number, b: number): boolean {
  const d = (a - b) >>> 0;
  return d !== 0 && d < 0x80000000;
}
