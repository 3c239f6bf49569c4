/**
 * The limits of the DHCP server (pxe/dhcp-server.ts) and their state.
 */
import type { Leases } from './leases.js';
import { RateLimit } from './rate-limit.js';

/**
 * Limits of the DHCP server. Every packet is spoofable (UDP broadcast, no
 * authentication), so each MAC is answered at a bounded rate, machines
 * never seen before get new addresses at a bounded rate in all, an offer
 * nobody requests lapses quickly, and part of the pool is kept for known
 * machines whatever made-up MACs ask.
 */
export interface DhcpLimits {
  /** DISCOVERs and REQUESTs one MAC may send at once before it is rate-limited. */
  perMacBurst: number;
  /** Then one per this many ms. A whole PXE boot (firmware, iPXE, the agent's system) is about 8. */
  perMacEveryMs: number;
  /** New machines (no lease, static address or registry entry) given an address at once, in all. */
  newBurst: number;
  /** Then one new machine per this many ms. */
  newEveryMs: number;
  /** How long an offered address is held for a REQUEST, ms (RFC 2131 4.3.1 leaves it to the server). */
  offerHoldMs: number;
  /** Part of the pool only known machines may take (0-1). */
  reserveFraction: number;
  /** How long a declined address stays out of the pool, ms. */
  declineHoldMs: number;
}

/** Default DhcpLimits. */
export const DHCP_LIMITS: Readonly<DhcpLimits> = Object.freeze({
  perMacBurst: 10,
  perMacEveryMs: 1000,
  newBurst: 32,
  newEveryMs: 1000,
  offerHoldMs: 15_000,
  reserveFraction: 0.25,
  declineHoldMs: 10 * 60_000,
});

/** The rate limiters of one DHCP server. */
export class DhcpGuard {
  readonly limits: Readonly<DhcpLimits>;
  /** DISCOVERs and REQUESTs by MAC. */
  readonly perMac: RateLimit;
  /** New machines, all together. */
  private readonly newMachines: RateLimit;

  constructor(limits: Partial<DhcpLimits> | undefined) {
    this.limits = Object.freeze({ ...DHCP_LIMITS, ...limits });
    this.perMac = new RateLimit({ burst: this.limits.perMacBurst, everyMs: this.limits.perMacEveryMs });
    this.newMachines = new RateLimit({ burst: this.limits.newBurst, everyMs: this.limits.newEveryMs, maxKeys: 1 });
  }

  /**
   * May mac be given ip, which it holds no active claim to? null if so,
   * else why not. A known machine (registry, static address) always, and
   * any machine its own last address again; otherwise while the
   * new-machine rate allows and more than the reserved part of the pool is
   * free, so made-up MACs can never take the addresses known machines need
   * (not even MACs that got an address once: only their own one again).
   */
  mayTakeNew(leases: Leases, mac: string, ip: string, registered: boolean): string | null {
    if (registered || leases.isStatic(mac) || leases.lastIp(mac) === ip) return null;
    // The rate first: it bounds how often the pool is counted, too.
    if (!this.newMachines.take('new')) return 'new machines are over their rate';
    const reserve = Math.floor(leases.poolSize * this.limits.reserveFraction);
    if (reserve > 0 && leases.free() <= reserve) return `only the ${reserve} addresses kept for known machines are free`;
    return null;
  }
}
