/**
 * The address pool and leases of the DHCP server in full mode, kept in
 * DATA/pxe/leases.json (state/state-file.ts: written off the event loop,
 * temp file, fsync, rename), so that a restarted server hands every
 * machine the address it had. The DHCP server awaits commit() before it
 * sends an ACK: an ACKed lease is on disk, and the ACKs of one burst share
 * one fsync (group commit).
 */
import { StateFile, type StateHealth } from '../state/state-file.js';

/** A lease: an address bound to a MAC until expires (ms since epoch). */
export interface Lease {
  mac: string;
  ip: string;
  expires: number;
  hostname: string;
  /** The client identifier (option 61, hex) it asked with, if any: a DECLINE or RELEASE must carry the same. */
  clientId?: string;
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * The pool, the leases and the addresses offered but not yet requested.
 * Every lookup by address is a map lookup (the pool scan of a DISCOVER is
 * one pass over the pool, not one pass over every lease per address).
 */
export class Leases {
  private readonly byMac: Map<string, Lease>;
  /** Address (as a number) to the MAC of its lease, active or expired. */
  private readonly leaseByIp = new Map<number, string>();
  private readonly offers = new Map<string, { ip: string; until: number }>();
  private readonly offerByIp = new Map<number, string>();
  private readonly staticByIp = new Map<number, string>();
  private readonly declined = new Map<string, number>();
  private readonly reservedN: Set<number>;
  private readonly start: number;
  private readonly end: number;
  /** leases.json, when the leases are kept on disk. */
  readonly file: StateFile<Map<string, Lease>> | undefined;

  constructor(
    path: string | undefined,
    pool: { start: string; end: string },
    /** Fixed addresses by MAC; never given to anyone else. */
    private readonly statics: Map<string, string> = new Map(),
    /** Addresses never handed out (the server's own, the router). */
    reserved: Set<string> = new Set(),
  ) {
    this.start = ipToInt(pool.start);
    this.end = ipToInt(pool.end);
    this.reservedN = new Set([...reserved].map(ipToInt));
    for (const [mac, ip] of statics) this.staticByIp.set(ipToInt(ip), mac);
    if (path === undefined) this.byMac = new Map();
    else {
      this.file = new StateFile<Map<string, Lease>>({
        path,
        initial: () => new Map(),
        validate: (v) => {
          if (!Array.isArray(v)) throw new Error('not a list');
          return new Map((v as Lease[]).map((l) => [l.mac, l]));
        },
        serialize: (m) => JSON.stringify([...m.values()], null, 1),
        // A lease is committed before its ACK; a RELEASE or DECLINE (rare, no reply) is written at once too.
        debounceMs: 0,
      });
      this.byMac = this.file.value;
    }
    for (const l of this.byMac.values()) {
      // A file may hold an expired lease of an address another MAC holds now: the later one counts.
      const n = ipToInt(l.ip);
      const other = this.byMac.get(this.leaseByIp.get(n) ?? '');
      if (other === undefined || other.expires < l.expires) this.leaseByIp.set(n, l.mac);
    }
  }

  /** The active lease of mac, if any. */
  get(mac: string, now = Date.now()): Lease | undefined {
    const l = this.byMac.get(mac);
    return l !== undefined && l.expires > now ? l : undefined;
  }

  /** The address of mac's last lease here, active or expired. */
  lastIp(mac: string): string | undefined {
    return this.byMac.get(mac)?.ip;
  }

  /** True if mac has a fixed address. */
  isStatic(mac: string): boolean {
    return this.statics.has(mac);
  }

  /** Addresses of the pool nobody holds now (no lease, offer, static or decline on them). */
  free(now = Date.now()): number {
    let n = 0;
    for (let a = this.start; a <= this.end; a++) if (this.availableN('', a, undefined, now)) n++;
    return n;
  }

  /** Addresses in the pool. */
  get poolSize(): number {
    return this.end - this.start + 1;
  }

  /** Every lease, active or not. */
  list(): Lease[] {
    return [...this.byMac.values()];
  }

  /** Who holds address n now (static, lease or pending offer), if anyone. */
  private holder(n: number, now: number): string | undefined {
    const s = this.staticByIp.get(n);
    if (s !== undefined) return s;
    const leased = this.leaseByIp.get(n);
    if (leased !== undefined) {
      const l = this.byMac.get(leased);
      if (l !== undefined && l.expires > now && ipToInt(l.ip) === n) return leased;
    }
    const offered = this.offerByIp.get(n);
    if (offered !== undefined) {
      const o = this.offers.get(offered);
      if (o !== undefined && o.until > now && ipToInt(o.ip) === n) return offered;
    }
    return undefined;
  }

  /** True if ip is in the pool or a static address. */
  inRange(ip: string): boolean {
    const n = ipToInt(ip);
    return (n >= this.start && n <= this.end) || this.staticByIp.has(n);
  }

  /** True if mac may use ip (free, or already its own). */
  available(mac: string, ip: string, now = Date.now()): boolean {
    return this.availableN(mac, ipToInt(ip), ip, now);
  }

  private availableN(mac: string, n: number, ip: string | undefined, now: number): boolean {
    if (!((n >= this.start && n <= this.end) || this.staticByIp.has(n)) || this.reservedN.has(n)) return false;
    if (this.declined.size > 0 && (this.declined.get(ip ?? intToIp(n)) ?? 0) > now) return false;
    const h = this.holder(n, now);
    return h === undefined || h === mac;
  }

  /** Chooses an address for mac: static, its lease, the one it asks for, or the lowest free one; null when the pool is full. */
  choose(mac: string, requested: string | null, now = Date.now()): string | null {
    const fixed = this.statics.get(mac);
    if (fixed !== undefined) return fixed;
    const own = this.byMac.get(mac);
    if (own !== undefined && this.available(mac, own.ip, now)) return own.ip;
    if (requested !== null && this.available(mac, requested, now)) return requested;
    for (let n = this.start; n <= this.end; n++) {
      if (this.availableN(mac, n, undefined, now)) return intToIp(n);
    }
    return null;
  }

  /** Holds ip for mac while the client decides (RFC 2131 section 4.3.1). */
  offer(mac: string, ip: string, holdMs: number, now = Date.now()): void {
    this.withdraw(mac);
    // Offers nobody requested are forgotten once they lapse (a flood of made-up MACs leaves nothing behind).
    if (this.offers.size > this.poolSize) {
      for (const [m, o] of this.offers) if (o.until <= now) this.withdraw(m);
    }
    this.offers.set(mac, { ip, until: now + holdMs });
    this.offerByIp.set(ipToInt(ip), mac);
  }

  /** The address offered to mac, if still held. */
  offered(mac: string, now = Date.now()): string | undefined {
    const o = this.offers.get(mac);
    return o !== undefined && o.until > now ? o.ip : undefined;
  }

  /** Forgets an offer (the client chose another server). */
  withdraw(mac: string): void {
    const o = this.offers.get(mac);
    if (o === undefined) return;
    this.offers.delete(mac);
    const n = ipToInt(o.ip);
    if (this.offerByIp.get(n) === mac) this.offerByIp.delete(n);
  }

  /** Binds ip to mac for seconds; commit() makes it durable. */
  bind(mac: string, ip: string, seconds: number, hostname: string, now = Date.now(), clientId?: string): Lease {
    this.withdraw(mac);
    this.forget(mac);
    const lease: Lease = { mac, ip, expires: now + seconds * 1000, hostname, ...(clientId !== undefined ? { clientId } : {}) };
    this.byMac.set(mac, lease);
    this.leaseByIp.set(ipToInt(ip), mac);
    this.file?.touch();
    return lease;
  }

  /**
   * True if mac, asking with clientId, holds ip now (its active lease): the
   * only client whose DECLINE or RELEASE of ip counts (RFC 2131 4.3.3-4.3.4
   * names the client by chaddr and client identifier).
   */
  holds(mac: string, ip: string, clientId: string | undefined, now = Date.now()): boolean {
    const l = this.get(mac, now);
    return l !== undefined && l.ip === ip && (l.clientId ?? '') === (clientId ?? '');
  }

  /** Ends mac's lease (RELEASE). */
  release(mac: string, ip: string, clientId?: string): boolean {
    const l = this.byMac.get(mac);
    if (l === undefined || l.ip !== ip || (l.clientId ?? '') !== (clientId ?? '')) return false;
    this.forget(mac);
    this.file?.touch();
    return true;
  }

  /** The client found ip in use (DECLINE): keep it out of the pool for a while. */
  decline(mac: string, ip: string, forMs: number, now = Date.now()): void {
    this.declined.set(ip, now + forMs);
    const l = this.byMac.get(mac);
    if (l?.ip === ip) this.forget(mac);
    this.withdraw(mac);
    this.file?.touch();
  }

  /** Resolves once every lease bound so far is on disk; rejects if the write failed. */
  commit(): Promise<void> {
    return this.file?.commit() ?? Promise.resolve();
  }

  /** Whether leases.json is saved (always ok when not kept on disk). */
  health(): StateHealth | undefined {
    return this.file?.health();
  }

  /** Writes what is pending (bounded) and stops writing. */
  close(): Promise<void> {
    return this.file?.close() ?? Promise.resolve();
  }

  private forget(mac: string): void {
    const l = this.byMac.get(mac);
    if (l === undefined) return;
    this.byMac.delete(mac);
    const n = ipToInt(l.ip);
    if (this.leaseByIp.get(n) === mac) this.leaseByIp.delete(n);
  }
}
