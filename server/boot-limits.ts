/**
 * Rate limits of the boot-script route (GET /boot/ipxe): firmware cannot
 * authenticate, so each requesting address and each MAC asked about may
 * fetch a script only so often. A booting machine fetches one per boot
 * (and one more 10 s after a failed boot); more is someone asking for
 * scripts in bulk.
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

  constructor(o: { perAddress?: { burst: number; everyMs: number }; perMac?: { burst: number; everyMs: number } } = {}) {
    this.byAddress = new RateLimit(o.perAddress ?? BOOT_SCRIPT_LIMITS.perAddress);
    this.byMac = new RateLimit(o.perMac ?? BOOT_SCRIPT_LIMITS.perMac);
  }

  /** 0 if a script for mac may be sent to address now (a token of each is taken), else the ms to wait. */
  wait(address: string, mac: string, now = Date.now()): number {
    const wait = Math.max(this.byAddress.waitMs(address, now), this.byMac.waitMs(mac, now));
    if (wait > 0) return wait;
    this.byAddress.take(address, now);
    this.byMac.take(mac, now);
    return 0;
  }
}
