/**
 * The sender's side of parity (docs/protocol.md, "Parity"): what goes out
 * for a chunk (its data fragments and proactive parity, or a repair: for
 * each stripe the largest count any receiver asked for, in parity indexes
 * never sent before for that stripe), the parity payloads themselves, and
 * how much proactive parity the measured loss calls for.
 */
import { encodeData, encodeParity, DataFlag, MCAST, ReceiverState, stripeCount, stripeSize } from '../protocol/mcast.js';
import { native } from '../native/addon.js';
import type { Peer } from './peers.js';

/** A chunk on its way out: data fragments (>= 0) and parity packets (parityItem()) in queue order. */
export interface Outgoing {
  chunk: number;
  data: Buffer;
  fragments: number;
  stripes: number;
  /** Items still to send, in order. */
  queue: number[];
  /** Parity payloads by item. */
  parity: Map<number, Buffer>;
  repair: boolean;
  /** Receivers the group does not reach that wanted this chunk: they get unicast copies. */
  unicastTo: Peer[];
}

/** A queue item for parity index p of stripe s (data fragments are their own index, >= 0). */
export function parityItem(s: number, p: number): number {
  return -1 - (s * 256 + p);
}

/** Parity indexes already used, per chunk and stripe; bounded (the oldest chunks are forgotten, their indexes start again). */
export class ParityLedger {
  private readonly used = new Map<number, Uint8Array>();

  constructor(private readonly max = 4096) {}

  /** The next unused parity index of stripe s of chunk (S stripes), or -1 if limit are used; marks it used. */
  take(chunk: number, stripes: number, s: number, limit: number): number {
    let row = this.used.get(chunk);
    if (row === undefined || row.length !== stripes) {
      row = new Uint8Array(stripes);
      if (this.used.size >= this.max) this.used.delete(this.used.keys().next().value!);
    } else {
      this.used.delete(chunk); // most recent last
    }
    this.used.set(chunk, row);
    if (row[s] >= limit) return -1;
    return row[s]++;
  }

  /** Parity indexes left for stripe s of chunk. */
  left(chunk: number, s: number, limit: number): number {
    return limit - (this.used.get(chunk)?.[s] ?? 0);
  }
}

/**
 * Builds what goes out for chunk: need undefined, every data fragment and then
 * `proactive` parity packets per stripe; otherwise a repair, need[s] new parity
 * packets for stripe s (or, once its parity indexes run out, all its data fragments again).
 */
export function plan(chunk: number, data: Buffer, fragmentSize: number, need: Uint8Array | undefined, proactive: number, ledger: ParityLedger, maxParity: number, unicastTo: Peer[]): Outgoing {
  const fragments = Math.max(1, Math.ceil(data.length / fragmentSize));
  const stripes = stripeCount(fragments);
  const queue: number[] = [];
  const wanted: number[][] = Array.from({ length: stripes }, () => []);
  if (need === undefined) {
    for (let f = 0; f < fragments; f++) queue.push(f);
    for (let s = 0; s < stripes; s++) for (let i = 0; i < proactive; i++) take(s);
  } else {
    for (let s = 0; s < stripes && s < need.length; s++) {
      if (need[s] === 0) continue;
      if (ledger.left(chunk, s, maxParity) >= need[s]) for (let i = 0; i < need[s]; i++) take(s);
      else for (let f = s; f < fragments; f += stripes) queue.push(f); // parity ran out: the stripe's data again
    }
  }
  // Round by round across stripes: a burst of losses in the parity hits different stripes.
  const rounds = Math.max(0, ...wanted.map((w) => w.length));
  for (let i = 0; i < rounds; i++) for (let s = 0; s < stripes; s++) if (i < wanted[s].length) queue.push(parityItem(s, wanted[s][i]));
  return { chunk, data, fragments, stripes, queue, parity: encodeStripes(data, fragmentSize, fragments, stripes, wanted), repair: need !== undefined, unicastTo };

  function take(s: number): void {
    const p = ledger.take(chunk, stripes, s, maxParity);
    if (p >= 0) wanted[s].push(p);
  }
}

/** The parity payloads of the indexes wanted[s] of each stripe s. */
function encodeStripes(data: Buffer, fragmentSize: number, fragments: number, stripes: number, wanted: number[][]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let gathered: Buffer | undefined;
  for (let s = 0; s < stripes; s++) {
    if (wanted[s].length === 0) continue;
    const k = stripeSize(fragments, stripes, s);
    gathered ??= Buffer.allocUnsafe(MCAST.STRIPE_K * fragmentSize);
    // The stripe's data fragments side by side, each padded with zeros to the fragment size.
    for (let j = 0; j < k; j++) {
      const off = (s + j * stripes) * fragmentSize;
      const n = data.copy(gathered, j * fragmentSize, off, Math.min(off + fragmentSize, data.length));
      if (n < fragmentSize) gathered.fill(0, j * fragmentSize + n, (j + 1) * fragmentSize);
    }
    const payloads = Buffer.allocUnsafe(wanted[s].length * fragmentSize);
    native().fecEncode(k, fragmentSize, gathered, Buffer.from(wanted[s]), payloads, 0);
    wanted[s].forEach((p, i) => out.set(parityItem(s, p), payloads.subarray(i * fragmentSize, (i + 1) * fragmentSize)));
  }
  return out;
}

/** Encodes the datagram for one queue item of out into packet, unsigned (the outbox signs it); returns its length. */
export function packetInto(packet: Buffer, out: Outgoing, item: number, session: number, seq: number, fragmentSize: number): number {
  const flags = out.repair ? DataFlag.REPAIR : 0;
  if (item < 0) {
    const payload = out.parity.get(item)!;
    const v = -1 - item;
    return encodeParity(packet, { session, seq, chunk: out.chunk, stripe: v >> 8, stripes: out.stripes, storedLength: out.data.length, parity: v & 0xff, flags, payload }, null);
  }
  const start = item * fragmentSize;
  const payload = out.data.subarray(start, Math.min(start + fragmentSize, out.data.length));
  return encodeData(packet, { session, seq, chunk: out.chunk, fragment: item, fragments: out.fragments, storedLength: out.data.length, flags, payload }, null);
}

/** A receiver's loss counts once it has seen this many packets. */
const MIN_PACKETS = 200;
/** The loss planned for before any receiver has reported enough packets: a few parity packets per chunk, worth one repair round saved on a lossy network. */
const PRIOR_LOSS = 0.01;
/** The quantile of receivers' loss the proactive parity covers (the max is too jumpy with many receivers). */
const LOSS_QUANTILE = 0.9;

/** The loss to plan proactive parity for: a high quantile of the receiving peers' cumulative loss. */
export function lossEstimate(peers: Iterable<Peer>): { loss: number; receivers: number } {
  const losses: number[] = [];
  let receivers = 0;
  for (const peer of peers) {
    if (peer.state !== ReceiverState.RECEIVING && peer.state !== ReceiverState.JOINING) continue;
    receivers++;
    const total = peer.received + peer.lost;
    if (total >= MIN_PACKETS) losses.push(peer.lost / total);
  }
  // Until a loss is measured (the first chunks of a session), plan for PRIOR_LOSS.
  if (losses.length === 0) return { loss: receivers > 0 ? PRIOR_LOSS : 0, receivers };
  losses.sort((a, b) => a - b);
  return { loss: losses[Math.min(losses.length - 1, Math.floor(LOSS_QUANTILE * losses.length))], receivers };
}

/** P(at most r of n packets lost), each lost with probability p. */
function cdf(n: number, p: number, r: number): number {
  let term = Math.pow(1 - p, n);
  let sum = term;
  for (let i = 1; i <= r && i <= n; i++) {
    term *= ((n - i + 1) / i) * (p / (1 - p));
    sum += term;
  }
  return Math.min(1, sum);
}

/** A repair round costs its packets and this many packets' worth of delay and reports. */
const ROUND_COST = 1.5;
/** Proactive parity is at most this many packets per stripe. */
const MAX_PROACTIVE = 16;

/**
 * Proactive parity packets per stripe of k for `receivers` receivers each losing `loss`:
 * the r that minimises the expected packets per stripe, r + E[max over receivers of the
 * packets still missing] (what the repair sends) + P(a repair is needed) x ROUND_COST.
 */
export function proactiveParity(loss: number, receivers: number, k: number = MCAST.STRIPE_K): number {
  if (loss <= 0 || receivers <= 0) return 0;
  const p = Math.min(loss, 0.5);
  let best = 0;
  let bestCost = Infinity;
  for (let r = 0; r <= MAX_PROACTIVE; r++) {
    const n = k + r;
    // E[max (X - r)+] = sum over m >= 0 of P(max X > r + m), X ~ Binomial(n, p) per receiver.
    let repair = 0;
    for (let m = 0; m < n - r; m++) {
      const more = 1 - Math.pow(cdf(n, p, r + m), receivers);
      repair += more;
      if (more < 1e-4) break;
    }
    const round = 1 - Math.pow(cdf(n, p, r), receivers);
    const cost = r + repair + round * ROUND_COST;
    if (cost < bestCost) {
      best = r;
      bestCost = cost;
    }
  }
  return best;
}
