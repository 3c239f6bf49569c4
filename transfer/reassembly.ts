/**
 * Reassembly: the receiver's table of chunk states and the chunks being put
 * together from fragments. It checks every fragment's sizes against the
 * manifest (anything else is not ours), keeps a bounded set of partial
 * chunks (evicting the emptiest), and says what is still needed: ranges of
 * needed chunks for a STATUS, per-stripe repair counts for partial chunks
 * that stalled. Parity packets count toward their stripe (stripes.ts).
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { CHUNK } from '../protocol/chunk.js';
import { fragmentCount, MCAST, stripeCount, type DataPacket, type ParityPacket, type Range, type StripeNeed } from '../protocol/mcast.js';
import { Scratch, StripeState } from './stripes.js';

/** Most STATUS bytes one chunk's repair may take (room is left for the header, the MAC and some ranges). */
const MAX_REPAIR_BYTES = MCAST.MAX_STATUS - MCAST.STATUS_HEADER - MCAST.MAC_SIZE - 64;

/** A chunk's state at the receiver. */
export const ChunkState = Object.freeze({ NEEDED: 0, PARTIAL: 1, QUEUED: 2, DONE: 3, NOT_SENT: 4 } as const);
export type ChunkState = (typeof ChunkState)[keyof typeof ChunkState];

interface Partial {
  buf: Buffer;
  got: Uint8Array;
  count: number;
  fragments: number;
  lastAt: number;
  nackedAt: number;
  stripes: StripeState;
}

/** What one data packet did. */
export type Accepted =
  | { kind: 'bad' }
  | { kind: 'duplicate' }
  | { kind: 'partial' }
  /** Every fragment is in: stored is the chunk's stored form; give buf back with recycle(). */
  | { kind: 'assembled'; chunk: number; stored: Buffer; buf: Buffer };

// The common outcomes, allocated once: accept() runs for every data packet.
const BAD: Accepted = Object.freeze({ kind: 'bad' });
const DUPLICATE: Accepted = Object.freeze({ kind: 'duplicate' });
const PARTIAL: Accepted = Object.freeze({ kind: 'partial' });

/** Chunk states and partial chunks of one image. */
export class Reassembly {
  readonly chunks: number;
  /** One ChunkState per chunk. */
  readonly status: Uint8Array;
  /** Stored-form length (header + payload) of each data chunk, 0 for the others. */
  readonly stored: Uint32Array;
  /** The manifest's xxh64 of each data chunk. */
  readonly hashes: BigUint64Array;
  /** Data chunks in the image. */
  readonly wanted: number;
  evictions = 0;
  /** Data fragments rebuilt from parity. */
  rebuilt = 0;
  private readonly scratch = new Scratch();
  private readonly partials = new Map<number, Partial>();
  private readonly pool: Buffer[] = [];
  private cursor = 0;

  constructor(
    private readonly manifest: Manifest,
    private readonly fragmentSize: number,
    private readonly maxPartials: number,
    /** Bytes each chunk carries beyond its stored form (the encryption tag, or 0). */
    private readonly overhead = 0,
  ) {
    const { table } = manifest;
    this.chunks = tableLength(table);
    this.status = new Uint8Array(this.chunks);
    this.stored = new Uint32Array(this.chunks);
    this.hashes = new BigUint64Array(this.chunks);
    let wanted = 0;
    for (let i = 0; i < this.chunks; i++) {
      const r = chunkAt(table, i);
      if (r.kind === ChunkKind.DATA) {
        this.stored[i] = CHUNK.HEADER_SIZE + r.storedLength + overhead;
        this.hashes[i] = r.xxh64;
        wanted++;
      } else {
        this.status[i] = ChunkState.NOT_SENT;
      }
    }
    this.wanted = wanted;
  }

  /** Takes one data packet. */
  accept(p: DataPacket, now: number): Accepted {
    const c = p.chunk;
    const expected = c < this.chunks ? this.stored[c] : 0;
    // Sizes must agree with the manifest: anything else is not ours.
    if (expected === 0 || p.storedLength !== expected || p.fragments !== fragmentCount(expected, this.fragmentSize)) return BAD;
    const offset = p.fragment * this.fragmentSize;
    if (p.payload.length !== Math.min(this.fragmentSize, expected - offset)) return BAD;
    const part = this.partialFor(c, p.fragments);
    if (part === undefined) return DUPLICATE;
    const bit = 1 << (p.fragment & 7);
    if (part.got[p.fragment >> 3] & bit) return DUPLICATE;
    part.got[p.fragment >> 3] |= bit;
    part.count++;
    part.lastAt = now;
    p.payload.copy(part.buf, offset);
    const s = part.stripes.stripeOf(p.fragment);
    part.stripes.data[s]++;
    if (part.stripes.decodable(s)) this.decode(part, s, expected);
    return this.finished(c, part, expected);
  }

  /**
   * Takes one parity packet: its sizes must agree with the manifest (stripe count,
   * a fragment-sized payload); it counts toward its stripe, which decodes once it
   * holds k packets.
   */
  acceptParity(p: ParityPacket, now: number): Accepted {
    const c = p.chunk;
    const expected = c < this.chunks ? this.stored[c] : 0;
    if (expected === 0 || p.storedLength !== expected || p.payload.length !== this.fragmentSize) return BAD;
    const fragments = fragmentCount(expected, this.fragmentSize);
    if (p.stripes !== stripeCount(fragments) || p.stripe >= p.stripes || p.parity >= MCAST.MAX_PARITY) return BAD;
    const part = this.partialFor(c, fragments);
    if (part === undefined || !part.stripes.addParity(p.stripe, p.parity, p.payload)) return DUPLICATE;
    part.lastAt = now;
    if (part.stripes.decodable(p.stripe)) this.decode(part, p.stripe, expected);
    return this.finished(c, part, expected);
  }

  /** The partial chunk c, made if needed; undefined if c is assembled already. */
  private partialFor(c: number, fragments: number): Partial | undefined {
    const st = this.status[c];
    if (st === ChunkState.DONE || st === ChunkState.QUEUED) return undefined;
    let part = this.partials.get(c);
    if (part === undefined) {
      if (this.partials.size >= this.maxPartials) this.evict();
      const buf = this.pool.pop() ?? Buffer.allocUnsafe(CHUNK.HEADER_SIZE + this.manifest.meta.chunkSize + this.overhead);
      part = { buf, got: new Uint8Array(Math.ceil(fragments / 8)), count: 0, fragments, lastAt: 0, nackedAt: 0, stripes: new StripeState(fragments) };
      this.partials.set(c, part);
      this.status[c] = ChunkState.PARTIAL;
    }
    return part;
  }

  private decode(part: Partial, s: number, expected: number): void {
    const has = (f: number) => (part.got[f >> 3] & (1 << (f & 7))) !== 0;
    const got = (f: number) => {
      part.got[f >> 3] |= 1 << (f & 7);
      part.count++;
    };
    this.rebuilt += part.stripes.decode(s, part.buf, expected, this.fragmentSize, has, got, this.scratch);
  }

  private finished(c: number, part: Partial, expected: number): Accepted {
    if (part.count < part.fragments) return PARTIAL;
    this.partials.delete(c);
    return { kind: 'assembled', chunk: c, stored: part.buf.subarray(0, expected), buf: part.buf };
  }

  /** Gives an assembled chunk's buffer back to the pool. */
  recycle(buf: Buffer): void {
    this.pool.push(buf);
  }

  private evict(): void {
    let victim = -1;
    let fewest = Infinity;
    for (const [c, part] of this.partials) {
      if (part.count < fewest) {
        fewest = part.count;
        victim = c;
      }
    }
    if (victim >= 0) {
      this.release(victim);
      this.evictions++;
    }
  }

  /** Gives up partial chunk c: it is needed whole again. */
  private release(c: number): void {
    this.pool.push(this.partials.get(c)!.buf);
    this.partials.delete(c);
    this.status[c] = ChunkState.NEEDED;
  }

  /**
   * Partial chunks that got nothing for a while (the sender has moved on), at most max
   * and at most bytes of STATUS: how many more packets each of their stripes needs.
   */
  stalledRepairs(now: number, srtt: number, max: number, bytes: number): StripeNeed[] {
    const delay = Math.max(20, 3 * srtt);
    const out: StripeNeed[] = [];
    for (const [chunk, part] of this.partials) {
      if (now - part.lastAt < delay || now - part.nackedAt < 2 * delay) continue;
      const size = 6 + part.stripes.stripes;
      if (size > MAX_REPAIR_BYTES) {
        // More stripes than a STATUS holds (tiny fragments, huge chunks): asked for whole instead.
        this.release(chunk);
        continue;
      }
      if (size > bytes) continue;
      bytes -= size;
      part.nackedAt = now;
      out.push({ chunk, stripes: part.stripes.stripes, need: part.stripes.needs() });
      if (out.length >= max) break;
    }
    return out;
  }

  /** Needed chunks as ranges, from a rotating cursor, as many as fit in room. */
  needRanges(room: number): { windowStart: number; windowEnd: number; ranges: Range[] } {
    if (this.cursor >= this.chunks) this.cursor = 0;
    const windowStart = this.cursor;
    const ranges: Range[] = [];
    let i = windowStart;
    while (i < this.chunks) {
      if (this.status[i] !== ChunkState.NEEDED) {
        i++;
        continue;
      }
      if (ranges.length >= room) break;
      let j = i;
      while (j < this.chunks && this.status[j] === ChunkState.NEEDED) j++;
      ranges.push({ first: i, count: j - i });
      i = j;
    }
    const windowEnd = i;
    this.cursor = windowEnd >= this.chunks ? 0 : windowEnd;
    return { windowStart, windowEnd, ranges };
  }
}
