/**
 * The multicast sender (docs/protocol.md). Serve loop: receive a STATUS,
 * decode, validate, update what that receiver needs, answer with an ACK.
 * Send loop: pick the repair or chunk most needed (demand.ts), cut it into
 * fragments and parity (parity.ts), pace them out at the current rate (pacer.ts).
 *
 * Mechanism only: when to start (release()) and whom to give up (drop())
 * are the caller's policy (policy.ts); receivers() gives it what to decide on.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { deriveKey, KEY_SIZE, MacKey } from '../protocol/mac.js';
import { decode, DropReason, encodeAck, MCAST, PacketType, peekVersion, ReceiverState, versionMismatch } from '../protocol/mcast.js';
import type { RemoteInfo, UdpSocket } from '../protocol/transport.js';
import { Admission } from './admission.js';
import { seal, SEAL_OVERHEAD } from './seal.js';
import { Demand } from './demand.js';
import { Outbox } from './outbox.js';
import { lossEstimate, packetInto, ParityLedger, plan, proactiveParity, type Outgoing } from './parity.js';
import { PACER_DEFAULTS, Pacer, RateControl } from './pacer.js';
import { PeerTable, statsOf, type Peer, type ReceiverStats } from './peers.js';
import { TRANSFER_DEFAULTS, validFragmentSize } from './session.js';
import { createUdpSocket, growBuffers } from './udp.js';
import { RECEIVER_DEFAULTS } from './receiver-options.js';
import { SENDER_DEFAULTS, type DropEvent, type SenderCounters, type SenderOptions } from './sender-options.js';

export type { ReceiverStats } from './peers.js';
export { SENDER_DEFAULTS, type DropEvent, type SenderCounters, type SenderOptions } from './sender-options.js';

/**
 * A multicast sender for one image version. Events (each carries receiverId):
 * 'join' (ReceiverStats), 'state' (ReceiverStats), 'status' (ReceiverStats),
 * 'unicast' (ReceiverStats), 'drop' (DropEvent); 'start' ({ receivers }) on
 * release(); 'error' (Error).
 */
export class Sender extends EventEmitter {
  readonly session: number;
  readonly counters: SenderCounters = {
    sendingSeconds: 0,
    packetsSent: 0,
    bytesSent: 0,
    chunksSent: 0,
    repairPackets: 0,
    parityPackets: 0,
    repairRounds: 0,
    unicastPackets: 0,
    statusReceived: 0,
    dropped: { malformed: 0, otherSession: 0, unexpected: 0, unknownReceiver: 0, badMac: 0, version: 0 },
    forgotten: 0,
    sendErrors: 0,
  };
  private readonly demand: Demand;
  private readonly peers: PeerTable;
  private readonly control: RateControl;
  private readonly pacer: Pacer;
  private readonly cache = new Map<number, Buffer>();
  private readonly ledger = new ParityLedger();
  private readonly fragmentSize: number;
  private socket: UdpSocket | undefined;
  private outbox: Outbox | undefined;
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private rateTimer: NodeJS.Timeout | undefined;
  private current: Outgoing | undefined;
  private prefetched: Outgoing | undefined;
  private next: Promise<Outgoing | undefined> | undefined;
  private stopped = false;
  private firstSend = 0;
  private released: boolean;
  private readonly secret: Buffer;
  private readonly dataMac: MacKey | null;
  private readonly admission: Admission;

  constructor(private readonly options: SenderOptions) {
    super();
    this.session = options.session ?? ((Math.random() * 0xffffffff) >>> 0);
    this.fragmentSize = options.fragmentSize ?? SENDER_DEFAULTS.fragmentSize;
    if (!validFragmentSize(this.fragmentSize)) throw new RangeError(`fragment size must be ${TRANSFER_DEFAULTS.minFragment} to ${TRANSFER_DEFAULTS.maxFragment}`);
    this.demand = new Demand(options.manifest, this.fragmentSize, options.encrypt === true ? SEAL_OVERHEAD : 0);
    this.peers = new PeerTable(this.demand.chunks);
    this.control = new RateControl(options.rateMbit ?? SENDER_DEFAULTS.rateMbit);
    this.pacer = new Pacer(this.control, this.fragmentSize);
    this.released = options.hold !== true;
    this.secret = Buffer.from(options.secret ?? randomBytes(KEY_SIZE));
    if (this.secret.length !== KEY_SIZE) throw new RangeError(`the session secret has ${KEY_SIZE} bytes`);
    this.dataMac = options.unauthenticated === true ? null : new MacKey(this.dataKey);
    this.admission = new Admission(this.secret, options.openAdmission === true, options.maxPeers ?? SENDER_DEFAULTS.maxPeers);
  }

  /** The session's data key: every DATA packet carries a MAC under it (the Assign's data_key). */
  get dataKey(): Buffer {
    return deriveKey(this.secret, 'data');
  }

  /** The session's encryption key (the Assign's encrypt_key when the session is encrypted). */
  get encryptKey(): Buffer {
    return deriveKey(this.secret, 'encrypt');
  }

  /** The key of receiver id as derived from the session secret (the server's receiver_key; with openAdmission, what receivers derive). */
  receiverKeyFor(receiverId: number): Buffer {
    return this.admission.keyFor(receiverId);
  }

  /**
   * Serves receiver id: its STATUS must carry a MAC under key, and the ACKs and any
   * unicast data for it go to address only (undefined: where its first authenticated STATUS came from).
   * Called again for the same id, replaces the key and address. False if the table is full.
   */
  admit(receiverId: number, key: Uint8Array, address?: string): boolean {
    if (!this.admission.admit(receiverId, key, address)) return false;
    const peer = this.peers.get(receiverId);
    if (peer !== undefined && address !== undefined) peer.address = address;
    return true;
  }

  /**
   * Stops serving receiver id (its machine ended in the session): its reports are refused
   * from now on, so a dropped or finished member cannot rejoin by restarting and keep
   * slowing the others. admit() serves it again.
   */
  revoke(receiverId: number): void {
    this.drop(receiverId, DropReason.SESSION_ENDED); // told while its key is still known; nothing if it ended already
    this.admission.revoke(receiverId);
  }

  /** Data may go by unicast to this receiver: its address was pinned when it was admitted, or admission is open (`send`). */
  private mayUnicast(receiverId: number): boolean {
    return this.options.openAdmission === true || this.admission.lookup(receiverId)?.address !== undefined;
  }

  /** Current pacing rate, bytes per second. */
  get rate(): number {
    return this.control.rate;
  }

  /** Binds the socket and starts the serve and send loops; resolves with the local port. */
  async start(): Promise<number> {
    const socket = (this.options.createSocket ?? createUdpSocket)();
    this.socket = socket;
    socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    // A bind that fails (the address is not this host's) rejects start(); later socket errors are events.
    let binding: ((err: Error) => void) | undefined;
    socket.on('error', (err) => (binding !== undefined ? binding(err) : this.emit('error', err)));
    await new Promise<void>((resolve, reject) => {
      binding = reject;
      socket.bind(0, this.options.address, () => {
        binding = undefined;
        resolve();
      });
    });
    socket.setMulticastInterface(this.options.address);
    socket.setMulticastTTL(this.options.ttl ?? SENDER_DEFAULTS.ttl);
    socket.setMulticastLoopback(true);
    growBuffers(socket);
    // Every DATA and PARITY packet goes out through the outbox: batched, signed in the same call.
    this.outbox = new Outbox(socket, Math.max(MCAST.DATA_HEADER, MCAST.PARITY_HEADER) + this.fragmentSize + MCAST.MAC_SIZE, this.dataMac === null ? null : { mac: this.dataMac, raw: this.dataKey }, (n) => {
      // ENOBUFS/EAGAIN: the local queue is full; the rate rule handles it once per interval.
      this.counters.sendErrors += n;
      this.control.congested();
    });
    this.pacer.reset(performance.now());
    this.timer = setInterval(() => this.tick(), PACER_DEFAULTS.tickMs);
    this.rateTimer = setInterval(() => {
      this.control.adjust(this.peers.closeInterval());
      this.forget(performance.now());
    }, PACER_DEFAULTS.rateIntervalMs);
    return socket.address().port;
  }

  /** Starts sending now (with hold: the caller's start rule is met). Progress is counted from here. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.peers.resetProgress(performance.now());
    this.emit('start', { receivers: this.peers.size });
    this.tick(); // the first chunk is picked and sent now, not at the next pacer tick
  }

  /** Stops sending and closes the socket. Receivers still running see no more data. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.rateTimer);
    try {
      this.socket?.close();
    } catch {
      // never bound (start() failed), or already closed
    }
  }

  /** Statistics of every receiver seen (the caller's liveness policy reads lastProgressAt and lastHeardAt). */
  receivers(): ReceiverStats[] {
    return this.peers.stats();
  }

  /** Receivers in the table now (bounded by maxPeers). */
  get peerCount(): number {
    return this.peers.size;
  }

  /**
   * Gives a receiver up: it is no longer served, and its next reports are
   * answered with an ACK in state DROPPED carrying reason (sent at once too).
   * A restarted receiver (new incarnation) is taken back. False if unknown or already ended.
   */
  drop(receiverId: number, reason: DropReason): boolean {
    const peer = this.peers.get(receiverId);
    if (peer === undefined || peer.state === ReceiverState.DONE || peer.state === ReceiverState.FAILED || peer.state === ReceiverState.DROPPED) return false;
    peer.state = ReceiverState.DROPPED;
    peer.reason = reason;
    this.demand.clear(peer);
    // Tell it now (before the events: a listener may stop the sender); echo the report
    // already answered, so that it takes no round-trip sample from this.
    this.reply(peer, peer.lastSeq >>> 0);
    const stats = statsOf(peer);
    this.emit('state', stats);
    this.emit('drop', { receiverId, reason, stats } satisfies DropEvent);
    return true;
  }

  /** Chunks that some active receiver needs, as the sender believes. */
  pendingDemand(): number {
    return this.demand.pending;
  }

  // ---- serve loop: STATUS in, ACK out ----

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    const p = decode(msg);
    if (p === null) {
      // Another version of this protocol is said once (the 'version' event) and counted.
      const version = peekVersion(msg);
      if (version === null || version === MCAST.VERSION) this.counters.dropped.malformed++;
      else if (this.counters.dropped.version++ === 0) this.emit('version', versionMismatch(version, 'receiver', 'sender'));
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
    // Authenticated before anything else: only a receiver this sender was told about (or,
    // with openAdmission, one holding the session secret's key for its id) changes anything.
    const admitted = this.admission.lookup(p.receiver);
    if (admitted === undefined) {
      this.counters.dropped.unknownReceiver++;
      return;
    }
    if (this.dataMac !== null && !admitted.key.verify(msg)) {
      this.counters.dropped.badMac++;
      return;
    }
    if (this.peers.get(p.receiver) === undefined && this.peers.size >= (this.options.maxPeers ?? SENDER_DEFAULTS.maxPeers)) {
      this.counters.dropped.unknownReceiver++;
      return;
    }
    this.admission.remember(p.receiver, admitted);
    this.counters.statusReceived++;
    const now = performance.now();
    const address = admitted.address ?? rinfo.address;
    // Data by unicast only to an address the admission pinned (or anyone's, admitted openly): never reflected elsewhere.
    if (p.unicast === true && !this.mayUnicast(p.receiver)) p.unicast = false;
    const { peer, joined, rejoined } = this.peers.peerFor(p, { address, port: rinfo.port }, now);
    if (joined) this.emit('join', statsOf(peer));
    if (rejoined) this.emit('state', statsOf(peer));
    // A report older than one already applied is stale (or replayed): answer it, change nothing.
    if (peer.lastSeq < 0 || seqNewer(p.seq, peer.lastSeq)) {
      peer.lastSeq = p.seq;
      peer.lastHeardAt = now;
      // Answers go to the admitted address only; the port is the receiver's socket's, from its newest report.
      peer.address = address;
      peer.port = rinfo.port;
      if (peer.state !== ReceiverState.DROPPED) this.apply(peer, p, now);
    }
    this.reply(peer, p.seq);
  }

  private apply(peer: Peer, p: Parameters<PeerTable['applyReport']>[1], now: number): void {
    const changed = this.peers.applyReport(peer, p, now);
    // Before sending begins, waiting is not a lack of progress.
    if (!this.released) peer.lastProgressAt = now;
    if (changed.becameUnicast) this.emit('unicast', statsOf(peer));
    if (changed.stateChanged) this.emit('state', statsOf(peer));
    if (peer.state === ReceiverState.DONE || peer.state === ReceiverState.FAILED) {
      this.demand.clear(peer);
    } else {
      this.demand.setNeeds(peer, p.windowStart, Math.min(p.windowEnd, this.demand.chunks), p.ranges, now);
      // As many repair asks as a receiver sends (a member's report cannot ask for the whole image at once).
      for (const k of p.repairs.slice(0, RECEIVER_DEFAULTS.maxNacks)) this.demand.addRepair(peer, k.chunk, k.stripes, k.need, now);
    }
    this.emit('status', statsOf(peer));
  }

  /** Forgets receivers that ended and went quiet, and any silent for very long: the table stays small and the tick cheap. */
  private forget(now: number): void {
    for (const peer of this.peers.forget(now, SENDER_DEFAULTS.forgetEndedMs, SENDER_DEFAULTS.forgetSilentMs, this.options.maxPeers ?? SENDER_DEFAULTS.maxPeers)) {
      this.demand.clear(peer);
      this.admission.forget(peer.receiverId);
      this.counters.forgotten++;
    }
  }

  private reply(peer: Peer, echo: number): void {
    const key = this.admission.lookup(peer.receiverId)?.key ?? null;
    const ack = encodeAck({
      session: this.session,
      seq: this.seq,
      receiver: peer.receiverId,
      echo,
      state: peer.state,
      reason: peer.reason,
      rateKiB: Math.round(this.control.rate / 1024),
    }, this.dataMac === null ? null : key);
    if (this.stopped || this.socket === undefined) return;
    try {
      this.socket.send(ack, peer.port, peer.address);
    } catch {
      // The socket went away: counted, never a throw into the serve loop or the caller's timer.
      this.counters.sendErrors++;
    }
  }

  // ---- send loop ----

  private tick(): void {
    if (this.stopped) return;
    const now = performance.now();
    let budget = this.pacer.refill(now);
    if (!this.released) return;
    // One receiver left: unicast, so that switches without IGMP snooping do
    // not flood the group to every port (a single restore, a remote site).
    const sole = this.options.unicastSingle === false ? undefined : this.peers.soleReceiver();
    const only = sole !== undefined && this.mayUnicast(sole.receiverId) ? sole : undefined;
    const dest = only !== undefined ? { port: only.port, address: only.address } : { port: this.options.port, address: this.options.group };
    const sentBefore = this.counters.packetsSent;
    while (budget >= this.pacer.packetBytes) {
      if (this.current === undefined || this.current.queue.length === 0) {
        // The next chunk was read ahead while this one went out.
        this.current = this.prefetched;
        this.prefetched = undefined;
        this.prepareNext();
        if (this.current === undefined) break; // still loading: send it on a later tick
        this.demand.sent(this.current.chunk, now, false);
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
      if (out.queue.length === 0) this.demand.sent(out.chunk, now, true);
    }
    this.outbox?.flush();
    this.pacer.settle(budget);
    if (this.counters.packetsSent > sentBefore) {
      if (this.firstSend === 0) this.firstSend = now;
      this.counters.sendingSeconds = (now - this.firstSend) / 1000;
    }
  }

  private sendFragment(out: Outgoing, f: number, dest: { port: number; address: string }): number {
    const packet = this.outbox!.slot();
    const length = packetInto(packet, out, f, this.session, this.seq++ >>> 0, this.fragmentSize);
    this.seq >>>= 0;
    this.counters.packetsSent++;
    this.counters.bytesSent += length;
    if (out.repair) this.counters.repairPackets++;
    if (f < 0) this.counters.parityPackets++;
    this.outbox!.commit(length, dest.port, dest.address);
    return length;
  }

  private prepareNext(): void {
    if (this.next !== undefined || this.prefetched !== undefined) return;
    const pick = this.demand.pick(this.peers.values(), performance.now());
    if (pick === undefined) return;
    this.next = this.outgoing(pick.chunk, pick.need, pick.unicastTo)
      .catch((err) => {
        this.demand.sent(pick.chunk, performance.now(), true); // not sent after all: it may be asked for again
        this.emit('error', err);
        return undefined;
      })
      .then((out) => {
        this.next = undefined;
        if (out === undefined || this.stopped) return out;
        if (out.queue.length === 0) {
          this.demand.sent(out.chunk, performance.now(), true); // nothing to send after all (a repair already met)
          this.prepareNext();
          return undefined;
        }
        if (this.current === undefined || this.current.queue.length === 0) {
          this.current = out;
          if (this.released) this.tick(); // nothing was going out while it loaded: send it now
        } else this.prefetched = out;
        this.prepareNext(); // read the one after ahead too
        return out;
      });
  }

  private async outgoing(chunk: number, need: Uint8Array | undefined, unicastTo: Peer[]): Promise<Outgoing> {
    let data = this.cache.get(chunk);
    if (data === undefined) {
      data = await this.options.loadChunk(chunk);
      if (this.options.encrypt === true) data = seal(this.encryptKey, chunk, data);
      this.cache.set(chunk, data);
      const limit = this.options.cacheChunks ?? SENDER_DEFAULTS.cacheChunks;
      // Map iteration order is insertion order: evict the oldest.
      while (this.cache.size > limit) this.cache.delete(this.cache.keys().next().value!);
    } else {
      this.cache.delete(chunk);
      this.cache.set(chunk, data);
    }
    const maxParity = this.options.maxParity ?? MCAST.MAX_PARITY;
    if (need !== undefined) this.counters.repairRounds++;
    // Proactive parity from the loss receivers report, unless fixed by the caller.
    const { loss, receivers } = lossEstimate(this.peers.values());
    const proactive = Math.min(maxParity, this.options.proactiveParity ?? proactiveParity(loss, receivers));
    return plan(chunk, data, this.fragmentSize, need, need === undefined ? proactive : 0, this.ledger, maxParity, unicastTo);
  }
}

/** True if sequence a is after b, with 32-bit wrap-around (RFC 1982 style). */
export function seqNewer(a: number, b: number): boolean {
  const d = (a - b) >>> 0;
  return d !== 0 && d < 0x80000000;
}
