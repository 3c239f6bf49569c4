/**
 * Token buckets by key (a MAC, an address), for the network-boot services:
 * each key may do `burst` things at once and then one every `everyMs`. The
 * table of keys is bounded: past `maxKeys` the least recently used key is
 * forgotten (it starts again with a full bucket), so a flood of made-up keys
 * costs a bounded amount of memory and only ever loosens the limit for keys
 * nobody has used for a while.
 */

/** Options of RateLimit. */
export interface RateLimitOptions {
  /** Things a key may do at once. */
  burst: number;
  /** One more thing per this many ms. */
  everyMs: number;
  /** Keys remembered at most (default 4096). */
  maxKeys?: number;
}

/** Default maxKeys. */
export const DEFAULT_RATE_KEYS = 4096;

/** A token bucket per key. */
export class RateLimit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(readonly o: RateLimitOptions) {
    if (!(o.burst >= 1) || !(o.everyMs > 0)) throw new RangeError('a rate limit needs burst >= 1 and everyMs > 0');
  }

  /** Takes one token for key: true if it had one, false if it must wait. */
  take(key: string, now = Date.now()): boolean {
    const b = this.refill(key, now);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Milliseconds until key has a token again (0 when it has one now). */
  waitMs(key: string, now = Date.now()): number {
    const b = this.buckets.get(key);
    if (b === undefined) return 0;
    const tokens = Math.min(this.o.burst, b.tokens + (now - b.at) / this.o.everyMs);
    return tokens >= 1 ? 0 : Math.ceil((1 - tokens) * this.o.everyMs);
  }

  /** Keys remembered now. */
  get size(): number {
    return this.buckets.size;
  }

  private refill(key: string, now: number): { tokens: number; at: number } {
    let b = this.buckets.get(key);
    if (b === undefined) {
      b = { tokens: this.o.burst, at: now };
      const max = this.o.maxKeys ?? DEFAULT_RATE_KEYS;
      // Map order is insertion order, and a used key is re-inserted below: the first key is the least recently used.
      while (this.buckets.size >= max) this.buckets.delete(this.buckets.keys().next().value!);
    } else {
      b.tokens = Math.min(this.o.burst, b.tokens + (now - b.at) / this.o.everyMs);
      b.at = now;
      this.buckets.delete(key);
    }
    this.buckets.set(key, b);
    return b;
  }
}
