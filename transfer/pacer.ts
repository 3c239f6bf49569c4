/**
 * Pacing and rate control for the sender. The pacer is a token bucket
 * refilled at the current rate every tick; its burst is bounded so that a
 * late timer does not turn into a flood. Rate control is AIMD on reported
 * loss: the worst receiving peer's loss over an interval (or a local send
 * failure, ENOBUFS) cuts the rate multiplicatively; low loss lets it grow
 * additively back to the maximum.
 */
import { MCAST } from '../protocol/mcast.js';

/** Tunables of pacing and rate control. */
export const PACER_DEFAULTS = Object.freeze({
  /** Pacing tick; a burst is what one tick's tokens allow, at most burstPackets. */
  tickMs: 1,
  burstPackets: 64,
  /** The rate never falls below this fraction of the maximum. */
  minRateFraction: 1 / 16,
  /** Loss above this (worst receiver, last interval) cuts the rate by decrease. */
  lossHigh: 0.25,
  /** Loss below this lets the rate grow by step of the maximum per interval. */
  lossLow: 0.05,
  decrease: 0.7,
  step: 0.05,
  rateIntervalMs: 250,
});

/** AIMD rate control; rate in bytes per second. */
export class RateControl {
  rate: number;
  readonly maxRate: number;
  /** A send failed locally (ENOBUFS) since the last adjustment. */
  private localCongestion = false;

  constructor(rateMbit: number) {
    this.maxRate = (rateMbit * 1e6) / 8;
    this.rate = this.maxRate;
  }

  /** A local send failed: counted once per interval, not once per packet. */
  congested(): void {
    this.localCongestion = true;
  }

  /** Ends an interval in which the worst receiving peer lost worstLoss (0-1). */
  adjust(worstLoss: number): void {
    const congested = worstLoss > PACER_DEFAULTS.lossHigh || this.localCongestion;
    this.localCongestion = false;
    if (congested) this.rate = Math.max(this.rate * PACER_DEFAULTS.decrease, this.maxRate * PACER_DEFAULTS.minRateFraction);
    else if (worstLoss < PACER_DEFAULTS.lossLow) this.rate = Math.min(this.rate + this.maxRate * PACER_DEFAULTS.step, this.maxRate);
  }
}

/** A token bucket over packets of one fragment size. */
export class Pacer {
  private tokens = 0;
  private lastTick = 0;

  constructor(
    private readonly control: RateControl,
    private readonly fragmentSize: number,
  ) {}

  /** Starts counting from now. */
  reset(now: number): void {
    this.lastTick = now;
  }

  /** Adds the tokens earned since the last tick; returns the bytes that may go out now. */
  refill(now: number): number {
    this.tokens = Math.min(this.tokens + ((now - this.lastTick) / 1000) * this.control.rate, this.burstBytes());
    this.lastTick = now;
    return this.tokens;
  }

  /** Keeps what the tick did not spend (it may be negative after unicast copies). */
  settle(left: number): void {
    this.tokens = left;
  }

  /** Bytes of one full data packet. */
  get packetBytes(): number {
    return MCAST.DATA_HEADER + this.fragmentSize + MCAST.MAC_SIZE;
  }

  private burstBytes(): number {
    // Four ticks of tokens at the current rate (a late timer does not lose
    // sending time), capped at burstPackets, or at 1.5 ticks when the rate
    // is so high that burstPackets would cap it: a burst then lasts no
    // longer than the tick that paces it.
    const pkt = this.packetBytes;
    const perTick = (this.control.rate * PACER_DEFAULTS.tickMs) / 1000;
    return Math.max(2 * pkt, Math.min(4 * perTick, Math.max(PACER_DEFAULTS.burstPackets * pkt, 1.5 * perTick)) + pkt);
  }
}
