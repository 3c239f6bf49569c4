/**
 * The receiver's side of parity (docs/protocol.md, "Parity"): per partial
 * chunk, how many packets each stripe holds, the parity fragments kept until
 * their stripe decodes, and the decode itself: as soon as a stripe holds
 * k distinct packets (data or parity) its missing data fragments are rebuilt
 * (Reed-Solomon through the addon: ISA-L, or the portable code).
 */
import { MCAST, stripeCount, stripeSize } from '../protocol/mcast.js';
import { native } from '../native/addon.js';

/** Stripe bookkeeping of one partial chunk. */
export class StripeState {
  readonly stripes: number;
  /** Data fragments held per stripe (received or rebuilt). */
  readonly data: Uint8Array;
  /** Parity fragments kept per stripe, by parity index (only while the stripe is incomplete). */
  private readonly parity = new Map<number, Map<number, Buffer>>();

  constructor(readonly fragments: number) {
    this.stripes = stripeCount(fragments);
    this.data = new Uint8Array(this.stripes);
  }

  /** Data fragments in stripe s. */
  size(s: number): number {
    return stripeSize(this.fragments, this.stripes, s);
  }

  /** The stripe a data fragment belongs to. */
  stripeOf(fragment: number): number {
    return fragment % this.stripes;
  }

  /** Packets held for stripe s (data and kept parity). */
  held(s: number): number {
    return this.data[s] + (this.parity.get(s)?.size ?? 0);
  }

  /** True if stripe s has every data fragment. */
  complete(s: number): boolean {
    return this.data[s] >= this.size(s);
  }

  /** Keeps a parity fragment (copied); false if the stripe is complete or this index is held already. */
  addParity(s: number, index: number, payload: Buffer): boolean {
    if (this.complete(s)) return false;
    let held = this.parity.get(s);
    if (held === undefined) this.parity.set(s, (held = new Map()));
    if (held.has(index)) return false;
    held.set(index, Buffer.from(payload));
    return true;
  }

  /** True if stripe s can be rebuilt now (k packets held, some data missing). */
  decodable(s: number): boolean {
    return !this.complete(s) && this.held(s) >= this.size(s);
  }

  /** What each stripe still needs (capped at 255), for a STATUS. */
  needs(): Uint8Array {
    const out = new Uint8Array(this.stripes);
    for (let s = 0; s < this.stripes; s++) out[s] = Math.min(255, Math.max(0, this.size(s) - this.held(s)));
    return out;
  }

  /**
   * Rebuilds stripe s's missing data fragments into buf (the chunk being assembled,
   * storedLength bytes of it meaningful); has(f) says whether data fragment f is held,
   * got(f) marks one rebuilt. Returns how many were rebuilt.
   */
  decode(s: number, buf: Buffer, storedLength: number, fragmentSize: number, has: (f: number) => boolean, got: (f: number) => void, scratch: Scratch): number {
    const k = this.size(s);
    const held = this.parity.get(s)!;
    const have = scratch.have(k * fragmentSize);
    const rows = Buffer.allocUnsafe(k);
    const want: number[] = [];
    let r = 0;
    for (let j = 0; j < k; j++) {
      const f = s + j * this.stripes;
      if (!has(f)) {
        want.push(j);
        continue;
      }
      const off = f * fragmentSize;
      const n = Math.min(fragmentSize, storedLength - off);
      buf.copy(have, r * fragmentSize, off, off + n);
      // Stripes are coded over fragments padded with zeros to the fragment size.
      if (n < fragmentSize) have.fill(0, r * fragmentSize + n, (r + 1) * fragmentSize);
      rows[r++] = j;
    }
    for (const [index, payload] of held) {
      if (r >= k) break;
      payload.copy(have, r * fragmentSize);
      rows[r++] = k + index;
    }
    const out = scratch.out(want.length * fragmentSize);
    if (!native().fecDecode(k, fragmentSize, have, rows, Buffer.from(want), out, 0)) return 0;
    want.forEach((j, i) => {
      const f = s + j * this.stripes;
      const off = f * fragmentSize;
      out.copy(buf, off, i * fragmentSize, i * fragmentSize + Math.min(fragmentSize, storedLength - off));
      got(f);
    });
    this.data[s] = k;
    this.parity.delete(s);
    return want.length;
  }
}

/** Working buffers for decodes, one set per receiver (a stripe is at most STRIPE_K fragments). */
export class Scratch {
  private a = Buffer.alloc(0);
  private b = Buffer.alloc(0);

  have(bytes: number): Buffer {
    if (this.a.length < bytes) this.a = Buffer.alloc(Math.max(bytes, MCAST.STRIPE_K * MCAST.DEFAULT_FRAGMENT));
    return this.a;
  }

  out(bytes: number): Buffer {
    if (this.b.length < bytes) this.b = Buffer.alloc(Math.max(bytes, MCAST.STRIPE_K * MCAST.DEFAULT_FRAGMENT));
    return this.b;
  }
}
