/**
 * The address pool and leases of the DHCP server in full mode, saved in
 * DATA/pxe/leases.json (temp file, fsync, rename) on every change, so that
 * a restarted server hands every machine the address it had.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/** A lease: an address bound to a MAC until expires (ms since epoch). */
export interface Lease {
  mac: string;
  ip: string;
  expires: number;
  hostname: string;
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** The pool, the leases and the addresses offered but not yet requested. */
export class Leases {
  private readonly byMac = new Map<string, Lease>();
  private readonly offers = new Map<string, { ip: string; until: number }>();
  private readonly declined = new Map<string, number>();

  constructor(
    private readonly path: string | undefined,
    private readonly pool: { start: string; end: string },
    /** Fixed addresses by MAC; never given to anyone else. */
    private readonly statics: Map<string, string> = new Map(),
    /** Addresses never handed out (the server's own, the router). */
    private readonly reserved: Set<string> = new Set(),
  ) {
    if (path !== undefined && existsSync(path)) {
      for (const l of JSON.parse(readFileSync(path, 'utf8')) as Lease[]) this.byMac.set(l.mac, l);
    }
  }

  /** The active lease of mac, if any. */
  get(mac: string, now = Date.now()): Lease | undefined {
    const l = this.byMac.get(mac);
    return l !== undefined && l.expires > now ? l : undefined;
  }

  /** Every lease, active or not. */
  list(): Lease[] {
    return [...this.byMac.values()];
  }

  /** Who holds ip now (lease or pending offer), if anyone. */
  private holder(ip: string, now: number): string | undefined {
    for (const [mac, ipS] of this.statics) if (ipS === ip) return mac;
    for (const l of this.byMac.values()) if (l.ip === ip && l.expires > now) return l.mac;
    for (const [mac, o] of this.offers) if (o.ip === ip && o.until > now) return mac;
    return undefined;
  }

  /** True if ip is in the pool or a static address. */
  inRange(ip: string): boolean {
    const n = ipToInt(ip);
    return (n >= ipToInt(this.pool.start) && n <= ipToInt(this.pool.end)) || [...this.statics.values()].includes(ip);
  }

  /** True if mac may use ip (free, or already its own). */
  available(mac: string, ip: string, now = Date.now()): boolean {
    if (!this.inRange(ip) || this.reserved.has(ip) || (this.declined.get(ip) ?? 0) > now) return false;
    const h = this.holder(ip, now);
    return h === undefined || h === mac;
  }

  /** Chooses an address for mac: static, its lease, the one it asks for, or the lowest free one; null when the pool is full. */
  choose(mac: string, requested: string | null, now = Date.now()): string | null {
    const fixed = this.statics.get(mac);
    if (fixed !== undefined) return fixed;
    const own = this.byMac.get(mac);
    if (own !== undefined && this.available(mac, own.ip, now)) return own.ip;
    if (requested !== null && this.available(mac, requested, now)) return requested;
    for (let n = ipToInt(this.pool.start); n <= ipToInt(this.pool.end); n++) {
      const ip = intToIp(n);
      if (this.available(mac, ip, now)) return ip;
    }
    return null;
  }

  /** Holds ip for mac while the client decides (RFC 2131 section 4.3.1). */
  offer(mac: string, ip: string, holdMs: number, now = Date.now()): void {
    this.offers.set(mac, { ip, until: now + holdMs });
  }

  /** The address offered to mac, if still held. */
  offered(mac: string, now = Date.now()): string | undefined {
    const o = this.offers.get(mac);
    return o !== undefined && o.until > now ? o.ip : undefined;
  }

  /** Forgets an offer (the client chose another server). */
  withdraw(mac: string): void {
    this.offers.delete(mac);
  }

  /** Binds ip to mac for seconds. */
  bind(mac: string, ip: string, seconds: number, hostname: string, now = Date.now()): Lease {
    this.offers.delete(mac);
    const lease = { mac, ip, expires: now + seconds * 1000, hostname };
    this.byMac.set(mac, lease);
    this.save();
    return lease;
  }

  /** Ends mac's lease (RELEASE). */
  release(mac: string, ip: string): boolean {
    const l = this.byMac.get(mac);
    if (l === undefined || l.ip !== ip) return false;
    this.byMac.delete(mac);
    this.save();
    return true;
  }

  /** The client found ip in use (DECLINE): keep it out of the pool for a while. */
  decline(mac: string, ip: string, forMs: number, now = Date.now()): void {
    this.declined.set(ip, now + forMs);
    const l = this.byMac.get(mac);
    if (l?.ip === ip) this.byMac.delete(mac);
    this.offers.delete(mac);
    this.save();
  }

  private save(): void {
    if (this.path === undefined) return;
    mkdirSync(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.tmp.${process.pid}`;
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeSync(fd, JSON.stringify(this.list(), null, 1));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
  }
}
