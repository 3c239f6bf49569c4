/**
 * The start clock: one timer per waiting session whose rule has a time in
 * it (wait after the first join, or at a time), set for exactly that time.
 * Everything else a rule depends on (a machine joining, a start by hand)
 * is evaluated the moment it happens, so a session starts without waiting
 * for any polling interval.
 */
import { nextDue, type RuleSubject } from './session-rules.js';

/** setTimeout's longest delay; a later time is reached in steps. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/** Wakes waiting sessions when the time-based part of their rule falls due. */
export class StartClock {
  private readonly timers = new Map<number, { due: number; timer: NodeJS.Timeout }>();

  /** wake(id) is called at the due time of session id (it evaluates the rule again, and schedules again if still waiting). */
  constructor(private readonly wake: (id: number) => void) {}

  /** Sets (or moves) session s's timer to its rule's next due time; none if nothing is due ahead. */
  schedule(s: RuleSubject & { id: number }): void {
    const now = Date.now();
    const due = nextDue(s, now);
    const set = this.timers.get(s.id);
    if (set !== undefined && set.due === due) return;
    this.cancel(s.id);
    if (due === null) return;
    const timer = setTimeout(() => {
      this.timers.delete(s.id);
      this.wake(s.id);
    }, Math.min(MAX_DELAY_MS, due - now));
    timer.unref();
    this.timers.set(s.id, { due, timer });
  }

  /** Clears session id's timer. */
  cancel(id: number): void {
    clearTimeout(this.timers.get(id)?.timer);
    this.timers.delete(id);
  }

  /** Clears every timer. */
  close(): void {
    for (const id of [...this.timers.keys()]) this.cancel(id);
  }
}
