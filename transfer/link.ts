/**
 * What a receiver knows about its link to the sender: packet loss from the
 * sender's sequence numbers, the smoothed round-trip time from ACKs echoing
 * its reports, and whether the group reaches it at all (the unicast fallback).
 */

/** The unicast fallback: no data for this long while the sender sent this many packets. */
const UNICAST_AFTER_MS = 3000;
const UNICAST_AFTER_PACKETS = 64;
/**
 * A forward jump of the sender's sequence counts as loss up to MAX_GAP packets
 * (a second at 1 Gbit/s is ~85,000). A packet further ahead or behind counts
 * nothing and moves nothing: a replayed old packet (its MAC is still good) must
 * not make loss appear, and a restarted sender comes with a restarted receiver
 * (a new Assign). Packets within MAX_GAP behind are remembered in a bitmap, so a
 * late one cancels its loss once and a duplicate or replay cancels nothing.
 */
const MAX_GAP = 1 << 16;
/** Reports remembered for RTT samples. */
const SENT_KEPT = 64;

/** Loss, RTT and multicast reachability as one receiver sees them. */
export class Link {
  /** Smoothed round-trip time, ms (0 until the first sample). */
  srtt = 0;
  /** Data packets the sender's sequence says were sent to us but never came. */
  lost = 0;
  /** Send my data by unicast: asked for, or multicast never arrives while the sender sends. */
  unicast: boolean;
  private maxSeq = -1;
  /** Bit seq % MAX_GAP: that packet arrived (for the MAX_GAP packets up to maxSeq). */
  private readonly arrived = new Uint8Array(MAX_GAP >> 3);
  private readonly sentAt = new Map<number, number>();
  private lastDataAt = 0;
  /** The sender's packet sequence in its latest ACK, and what it was when data last arrived. */
  private ackSeq = 0;
  private ackSeqAtData = 0;

  constructor(unicast: boolean) {
    this.unicast = unicast;
  }

  /** A data packet with sequence seq arrived at now; packets is how many have arrived in all. countLoss: gaps are ours to count. */
  data(seq: number, now: number, packets: number, countLoss: boolean): void {
    this.lastDataAt = now;
    this.ackSeqAtData = this.ackSeq;
    if (!countLoss) return;
    if (this.maxSeq < 0) {
      this.maxSeq = seq;
      this.mark(seq, true);
      return;
    }
    const ahead = (seq - this.maxSeq) >>> 0;
    const behind = (this.maxSeq - seq) >>> 0;
    if (ahead !== 0 && ahead <= MAX_GAP) {
      this.lost += ahead - 1;
      for (let s = (this.maxSeq + 1) >>> 0; s !== seq; s = (s + 1) >>> 0) this.mark(s, false);
      this.mark(seq, true);
      this.maxSeq = seq;
    } else if (behind !== 0 && behind < MAX_GAP && !this.has(seq)) {
      // Late (reordered): counted lost when the gap was seen, it was not.
      this.mark(seq, true);
      if (this.lost > 0) this.lost--;
    }
  }

  private has(seq: number): boolean {
    const i = seq % MAX_GAP;
    return (this.arrived[i >> 3] & (1 << (i & 7))) !== 0;
  }

  private mark(seq: number, arrived: boolean): void {
    const i = seq % MAX_GAP;
    if (arrived) this.arrived[i >> 3] |= 1 << (i & 7);
    else this.arrived[i >> 3] &= ~(1 << (i & 7));
  }

  /** A STATUS with sequence seq went out at now. */
  sent(seq: number, now: number): void {
    this.sentAt.set(seq, now);
    if (this.sentAt.size > SENT_KEPT) this.sentAt.delete(this.sentAt.keys().next().value!);
  }

  /** An ACK for us: the sender's packet sequence, and the report it echoes (an RTT sample if we still know it). */
  ack(senderSeq: number, echo: number, now: number): void {
    this.ackSeq = senderSeq;
    const sent = this.sentAt.get(echo);
    if (sent === undefined) return;
    const rtt = now - sent;
    this.srtt = this.srtt === 0 ? rtt : 0.875 * this.srtt + 0.125 * rtt;
    this.sentAt.delete(echo);
  }

  /**
   * Unicast fallback: the sender's ACKs show it sending (its packet sequence moved on by
   * UNICAST_AFTER_PACKETS) while no data packet reached this receiver for UNICAST_AFTER_MS
   * since since: the group does not reach it (another subnet, no multicast routing). Sticky;
   * returns the silence that decided it, once, or undefined.
   */
  checkUnicast(now: number, since: number, stillNeeds: boolean): { silentMs: number; senderPackets: number } | undefined {
    if (this.unicast || !stillNeeds) return undefined;
    const silentFor = now - Math.max(this.lastDataAt, since);
    const sentSince = (this.ackSeq - this.ackSeqAtData) >>> 0;
    if (silentFor > UNICAST_AFTER_MS && sentSince > UNICAST_AFTER_PACKETS && sentSince < 0x80000000) {
      this.unicast = true;
      return { silentMs: Math.round(silentFor), senderPackets: sentSince };
    }
    return undefined;
  }
}
