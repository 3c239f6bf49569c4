/**
 * Demand and pick, the sender's scheduler: how many receivers need each
 * chunk (kept in step with every peer's need bitmap), the repairs asked for
 * (per stripe, the largest count any receiver needs: new parity packets
 * serve every receiver at once, whatever each one lost), and the choice of
 * what goes out next: repairs first, then the chunk most receivers need,
 * scanning from a moving cursor.
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { CHUNK } from '../protocol/chunk.js';
import { fragmentCount, stripeCount, stripeSize } from '../protocol/mcast.js';
import type { Peer } from './peers.js';

/** A chunk just sent is not asked for again for this many round-trip times, whatever stale reports say. */
const RESEND_GUARD_RTTS = 3;
const MIN_GUARD_MS = 30;
/** pick() looks at this many needed chunks from the cursor and takes the most needed. */
const PICK_WINDOW = 256;

/** What goes out next: a whole chunk, or the fragments of a repair. */
export interface Pick {
  chunk: number;
  /** Packets each stripe needs (a repair); undefined: the whole chunk. */
  need?: Uint8Array;
  /** Receivers the group does not reach that wanted it: they get unicast copies. */
  unicastTo: Peer[];
}

/** Per-chunk demand over all peers. */
export class Demand {
  readonly chunks: number;
  private readonly kinds: Uint8Array;
  private readonly count: Uint16Array;
  /** Sum of count[], so that an idle sender does not scan the table every tick. */
  private total = 0;
  private readonly lastSent: Float64Array;
  /** When each chunk last went out (whole or repaired): repair asks written before its packets arrived are stale. */
  private readonly repairedAt: Float64Array;
  /** Chunks picked and not yet all sent: a report naming one was written before its packets arrived. */
  private readonly inFlight = new Set<number>();
  private readonly repairs = new Map<number, Uint8Array>();
  /** Repairs asked for by receivers the group does not reach. */
  private readonly unicastRepairs = new Map<number, Set<Peer>>();
  private cursor = 0;

  constructor(
    private readonly manifest: Manifest,
    private readonly fragmentSize: number,
    /** Bytes each chunk carries beyond its stored form (the encryption tag, or 0). */
    private readonly overhead = 0,
  ) {
    this.chunks = tableLength(manifest.table);
    this.kinds = new Uint8Array(this.chunks);
    for (let i = 0; i < this.chunks; i++) this.kinds[i] = chunkAt(manifest.table, i).kind;
    this.count = new Uint16Array(this.chunks);
    this.lastSent = new Float64Array(this.chunks);
    this.repairedAt = new Float64Array(this.chunks);
  }

  /** Chunk-needs summed over peers. */
  get pending(): number {
    return this.total;
  }

  /** How many peers need chunk i. */
  demandOf(i: number): number {
    return this.count[i];
  }

  /**
   * The ranges are all this peer needs inside [start, end): clear the
   * window, then set the ranges. A chunk sent less than a guard time ago is
   * not set: the report was probably written before it arrived.
   */
  setNeeds(peer: Peer, start: number, end: number, ranges: { first: number; count: number }[], now: number): void {
    const guard = Math.max(MIN_GUARD_MS, peer.rttMs * RESEND_GUARD_RTTS);
    // Clearing costs a pass over the window; skip it when nothing is set.
    if (peer.needCount > 0) for (let i = start; i < end; i++) this.setNeed(peer, i, false);
    for (const r of ranges) {
      for (let i = r.first; i < Math.min(r.first + r.count, end); i++) {
        if (this.kinds[i] === ChunkKind.DATA && now - this.lastSent[i] > guard && !this.inFlight.has(i)) this.setNeed(peer, i, true);
      }
    }
  }

  /** Forgets everything peer needs (it ended or was dropped). */
  clear(peer: Peer): void {
    this.setNeeds(peer, 0, this.chunks, [], 0);
  }

  private setNeed(peer: Peer, i: number, on: boolean): void {
    const bit = 1 << (i & 7);
    const has = (peer.need[i >> 3] & bit) !== 0;
    if (has === on) return;
    if (on) {
      peer.need[i >> 3] |= bit;
      this.count[i]++;
      this.total++;
      peer.needCount++;
    } else {
      peer.need[i >> 3] &= ~bit;
      this.count[i]--;
      this.total--;
      peer.needCount--;
    }
  }

  /**
   * Records a repair ask: peer's stripes of chunk need these many more packets. Malformed
   * ones (wrong chunk, wrong stripe count) are ignored, and so are asks within a guard time
   * of the chunk's last send (written before those packets arrived; the peer asks again).
   */
  addRepair(peer: Peer, chunk: number, stripes: number, need: Uint8Array, now: number): void {
    if (chunk >= this.chunks || this.kinds[chunk] !== ChunkKind.DATA) return;
    const fragments = fragmentCount(CHUNK.HEADER_SIZE + chunkAt(this.manifest.table, chunk).storedLength + this.overhead, this.fragmentSize);
    if (stripes !== stripeCount(fragments) || need.length !== stripes) return;
    // No receiver needs more packets of a stripe than it has data fragments, and an ask for
    // nothing is no ask: a member's report can neither multiply the parity sent nor hold a chunk.
    let asked = 0;
    for (let s = 0; s < stripes; s++) asked += Math.min(need[s], stripeSize(fragments, stripes, s));
    if (asked === 0) return;
    peer.nacks++;
    if (this.inFlight.has(chunk) || now - this.repairedAt[chunk] < Math.max(MIN_GUARD_MS, peer.rttMs * RESEND_GUARD_RTTS)) return;
    const most = this.repairs.get(chunk) ?? new Uint8Array(stripes);
    // The largest count anyone needs: new parity packets repair a different loss at each receiver.
    for (let s = 0; s < stripes; s++) most[s] = Math.max(most[s], Math.min(need[s], stripeSize(fragments, stripes, s)));
    this.repairs.set(chunk, most);
    if (peer.unicast) {
      const set = this.unicastRepairs.get(chunk) ?? new Set<Peer>();
      set.add(peer);
      this.unicastRepairs.set(chunk, set);
    }
  }

  /**
   * Chunk (whole or a repair) starts or finishes going out now: reports written before its
   * packets arrive are stale (a chunk read ahead may go out well after pick() chose it).
   */
  sent(chunk: number, now: number, finished: boolean): void {
    this.repairedAt[chunk] = now;
    this.lastSent[chunk] = now;
    if (finished) this.inFlight.delete(chunk);
  }

  /** Repairs first, then the chunk most peers need; the picked chunk is assumed delivered (a peer that loses it asks again). */
  pick(peers: Iterable<Peer>, now: number): Pick | undefined {
    for (const [chunk, need] of this.repairs) {
      this.repairs.delete(chunk);
      const unicastTo = [...(this.unicastRepairs.get(chunk) ?? [])];
      this.unicastRepairs.delete(chunk);
      this.repairedAt[chunk] = now;
      this.inFlight.add(chunk);
      return { chunk, need, unicastTo };
    }
    if (this.total === 0) return undefined;
    let best = -1;
    let bestDemand = 0;
    // Take the most needed chunk among the first ones found, so that work
    // spreads over the disk in order.
    let seen = 0;
    for (let k = 0; k < this.chunks; k++) {
      const i = (this.cursor + k) % this.chunks;
      const d = this.count[i];
      if (d === 0) continue;
      if (d > bestDemand) {
        best = i;
        bestDemand = d;
      }
      if (++seen >= PICK_WINDOW) break;
    }
    if (best < 0) return undefined;
    this.cursor = (best + 1) % this.chunks;
    const unicastTo: Peer[] = [];
    for (const peer of peers) {
      if (peer.unicast && (peer.need[best >> 3] & (1 << (best & 7))) !== 0) unicastTo.push(peer);
      this.setNeed(peer, best, false);
    }
    this.lastSent[best] = now;
    this.repairedAt[best] = now;
    this.inFlight.add(best);
    return { chunk: best, unicastTo };
  }
}
