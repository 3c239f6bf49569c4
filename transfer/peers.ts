/**
 * The sender's table of receivers: who they are, where their reports come
 * from, which report was applied last, and the per-receiver statistics the
 * session policy reads (progress, loss, rate, the times it was last heard
 * and last made progress). What each one needs lives in demand.ts.
 */
import { DropReason, ReceiverState, type StatusPacket } from '../protocol/mcast.js';
import type { RemoteInfo } from '../protocol/transport.js';

/** What the sender knows about one receiver. */
export interface ReceiverStats {
  /** The id the receiver puts in every STATUS (the server names it in the Assign). */
  receiverId: number;
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
  /** performance.now() times. */
  joinedAt: number;
  lastHeardAt: number;
  /** Last time it wrote a chunk; while the sender holds, it is kept at now (waiting is not a lack of progress). */
  lastProgressAt: number;
}

/** One receiver, with what the sender keeps beside its statistics. */
export interface Peer extends ReceiverStats {
  port: number;
  /** Multicast does not reach it: it gets copies of its data by unicast. */
  unicast: boolean;
  /** Bits set in need. */
  needCount: number;
  incarnation: number;
  /** Bit per chunk: the sender believes this receiver needs it. */
  need: Uint8Array;
  lastSeq: number;
  intervalReceived: number;
  intervalLost: number;
}

/** What changed when a STATUS was applied. */
export interface Applied {
  stateChanged: boolean;
  becameUnicast: boolean;
}

/** Receivers by id. */
export class PeerTable {
  private readonly peers = new Map<number, Peer>();
  /** Statistics of receivers forgotten from the table, as they were last (receivers() still lists them). */
  private readonly ended = new Map<number, ReceiverStats>();

  constructor(private readonly chunks: number) {}

  get size(): number {
    return this.peers.size;
  }

  get(receiverId: number): Peer | undefined {
    return this.peers.get(receiverId);
  }

  values(): IterableIterator<Peer> {
    return this.peers.values();
  }

  /**
   * Removes receivers that ended and were silent for endedMs, and any silent
   * for silentMs; returns them (the caller clears their demand). Their last
   * statistics are kept, at most max.
   */
  forget(now: number, endedMs: number, silentMs: number, max: number): Peer[] {
    const out: Peer[] = [];
    for (const peer of this.peers.values()) {
      const silent = now - peer.lastHeardAt;
      const over = peer.state === ReceiverState.DONE || peer.state === ReceiverState.FAILED || peer.state === ReceiverState.DROPPED;
      if ((over && silent > endedMs) || silent > silentMs) out.push(peer);
    }
    for (const peer of out) {
      this.peers.delete(peer.receiverId);
      this.ended.delete(peer.receiverId);
      this.ended.set(peer.receiverId, statsOf(peer));
      if (this.ended.size > max) this.ended.delete(this.ended.keys().next().value!);
    }
    return out;
  }

  /**
   * The peer an authenticated STATUS comes from, created on first sight with
   * the address given (the caller's admitted one). A receiver that restarted
   * keeps its id but may come from a new port, numbers its reports from
   * scratch (a new incarnation), and is welcome back even if dropped.
   */
  peerFor(p: StatusPacket, rinfo: Pick<RemoteInfo, 'address' | 'port'>, now: number): { peer: Peer; joined: boolean; rejoined: boolean } {
    let peer = this.peers.get(p.receiver);
    let joined = false;
    let rejoined = false;
    if (peer === undefined) {
      peer = {
        receiverId: p.receiver,
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
        lastHeardAt: now,
        lastProgressAt: now,
        need: new Uint8Array(Math.ceil(this.chunks / 8)),
        unicast: false,
        lastSeq: -1,
        needCount: 0,
        incarnation: p.incarnation,
        intervalReceived: 0,
        intervalLost: 0,
      };
      this.peers.set(p.receiver, peer);
      joined = true;
    }
    if (peer.incarnation !== p.incarnation) {
      peer.incarnation = p.incarnation;
      peer.lastSeq = -1;
      peer.lastProgressAt = now;
      peer.received = 0;
      peer.lost = 0;
      if (peer.state === ReceiverState.DROPPED) {
        peer.state = ReceiverState.JOINING;
        peer.reason = DropReason.NONE;
        rejoined = true;
      }
    }
    return { peer, joined, rejoined };
  }

  /** Takes a report's counters and state into the peer's statistics. */
  applyReport(peer: Peer, p: StatusPacket, now: number): Applied {
    const out: Applied = { stateChanged: false, becameUnicast: false };
    if (p.unicast === true && !peer.unicast) {
      peer.unicast = true;
      out.becameUnicast = true;
    }
    if (p.done > peer.done) {
      const dt = (now - peer.lastProgressAt) / 1000;
      peer.chunksPerSecond = dt > 0 ? (p.done - peer.done) / dt : 0;
      peer.lastProgressAt = now;
    } else if (p.done < peer.done) {
      peer.lastProgressAt = now; // restarted: count from here
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
      out.stateChanged = true;
    }
    return out;
  }

  /** Progress is counted from now for everyone (sending begins; waiting was not a lack of progress). */
  resetProgress(now: number): void {
    for (const peer of this.peers.values()) peer.lastProgressAt = now;
  }

  /**
   * Closes a rate interval: each peer's loss over it, and the worst loss of
   * a receiving peer that got enough packets to tell (0 if none did).
   */
  closeInterval(): number {
    let worst = 0;
    for (const peer of this.peers.values()) {
      const total = peer.intervalReceived + peer.intervalLost;
      peer.loss = total > 20 ? peer.intervalLost / total : peer.loss;
      peer.intervalReceived = 0;
      peer.intervalLost = 0;
      if (peer.state === ReceiverState.RECEIVING && total > 20) worst = Math.max(worst, peer.loss);
    }
    return worst;
  }

  /** The one receiver still receiving, if there is exactly one. */
  soleReceiver(): Peer | undefined {
    let only: Peer | undefined;
    for (const peer of this.peers.values()) {
      if (peer.state === ReceiverState.JOINING || peer.state === ReceiverState.RECEIVING) {
        if (only !== undefined) return undefined;
        only = peer;
      }
    }
    return only;
  }

  /** Every receiver's statistics, copied: those in the table, and those forgotten as they were last. */
  stats(): ReceiverStats[] {
    const gone = [...this.ended.values()].filter((r) => !this.peers.has(r.receiverId));
    return [...gone, ...[...this.peers.values()].map(statsOf)];
  }
}

/** A copy of a peer's public statistics (events and receivers() hand these out). */
export function statsOf(peer: Peer): ReceiverStats {
  return {
    receiverId: peer.receiverId,
    address: peer.address,
    state: peer.state,
    reason: peer.reason,
    done: peer.done,
    wanted: peer.wanted,
    received: peer.received,
    lost: peer.lost,
    loss: peer.loss,
    nacks: peer.nacks,
    chunksPerSecond: peer.chunksPerSecond,
    rttMs: peer.rttMs,
    joinedAt: peer.joinedAt,
    lastHeardAt: peer.lastHeardAt,
    lastProgressAt: peer.lastProgressAt,
  };
}
