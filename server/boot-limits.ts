/**
 * Rate limits of the boot-script route (GET /boot/ipxe): firmware cannot
 * authenticate, so each requesting address and each MAC asked about may
 * fetch a script only so often. A booting machine fetches one per boot
 * (and one more 10 s after a failed boot); more is someone asking for
 * scripts in bulk.
 *
 * The per-MAC table forgets its least recently used key when full. Over
 * TFTP (grub/clonecast/MAC.cfg) a request's source address can be forged,
 * so a flood of made-up MACs could push a real machine's bucket out and
 * fill it again: machines the server knows have their own table, which
 * requests about unknown MACs never touch.
 */
import { RateLimit } from '../pxe/rate-limit.js';

/** Default limits: scripts at once, then one per everyMs. */
export const BOOT_SCRIPT_LIMITS = Object.freeze({
  /** By the requesting address. */
  perAddress: Object.freeze({ burst: 10, everyMs: 1000 }),
  /** By the MAC asked about. */
  perMac: Object.freeze({ burst: 4, everyMs: 5000 }),
});

/** The limiters of one server. */
export class BootScriptLimits {
  private readonly byAddress: RateLimit;
  private readonly byMac: RateLimit;
  /** Known machines' buckets: only known MACs are ever added, so unknown ones cannot evict them. */
  private readonly byKnownMac: RateLimit;

  constructor(o: { perAddress?: { burst: number; everyMs: number }; perMac?: { burst: number; everyMs: number } } = {}) {
    this.byAddress = new RateLimit(o.perAddress ?? BOOT_SCRIPT_LIMITS.perAddress);
    this.byMac = new RateLimit(o.perMac ?? BOOT_SCRIPT_LIMITS.perMac);
    this.byKnownMac = new RateLimit(o.perMac ?? BOOT_SCRIPT_LIMITS.perMac);
  }

  /**
   * 0 if a script for mac may be sent to address now (a token of each is
   * taken), else the ms to wait. known: mac is a machine the server knows
   * (its bucket lives in the table unknown MACs cannot evict). own: the
   * request comes from the address the machine is known at (its lease or
   * its agent's address): it then has a bucket of its own, so that others
   * asking about its MAC from elsewhere cannot use up its boots.
   */
  wait(address: string, mac: string, now = Date.now(), known = false, own = false): number {
    const byMac = known ? this.byKnownMac : this.byMac;
    const key = known && own ? `${mac} ${address}` : mac;
    const wait = Math.max(this.byAddress.waitMs(address, now), byMac.waitMs(key, now));
    if (wait > 0) return wait;
    this.byAddress.take(address, now);
    byMac.take(key, now);
    return 0;
  }
}
