/**
 * Session policy as pure functions: when a session starts, and when a
 * receiver is given up. The sender only carries out what these decide
 * (release(), drop()); the server's sessions and `clonecast send` each run
 * them from a timer. No sockets, no timers, no clock of their own.
 */
import { DropReason, ReceiverState } from '../protocol/mcast.js';

/** When a session starts; any rule met starts it. No rule at all means now. */
export interface StartRule {
  /** As soon as this many receivers joined. */
  clients?: number;
  /** This many seconds after the first receiver joined. */
  waitS?: number;
  /** At this time (ISO 8601). */
  at?: string;
  now?: boolean;
}

/** Who has joined so far; firstJoinAt in ms on the same clock as `now` (Date.now() for `at`). */
export interface Joined {
  count: number;
  firstJoinAt: number | null;
}

/** Why rule is met (for the log), or null. A rule with nothing in it is met at once. */
export function startRuleMet(rule: StartRule, joined: Joined, now: number): string | null {
  if (rule.now === true || (rule.clients === undefined && rule.waitS === undefined && rule.at === undefined)) return 'its rule is "now"';
  if (rule.clients !== undefined && joined.count >= rule.clients) return `${joined.count} joined`;
  if (rule.waitS !== undefined && joined.count > 0 && joined.firstJoinAt !== null && now - joined.firstJoinAt >= rule.waitS * 1000) {
    return `${rule.waitS} s since the first one joined`;
  }
  if (rule.at !== undefined && now >= Date.parse(rule.at)) return `it is ${rule.at}`;
  return null;
}

/** What liveness looks at: a receiver's state and two times on one clock (performance.now() for the sender's stats). */
export interface LivenessStats {
  state: ReceiverState;
  /** Last time it wrote a chunk (or sending began, or it joined). */
  lastProgressAt: number;
  /** Last time anything was heard from it. */
  lastHeardAt: number;
}

/**
 * Whether to give a receiver up: SILENT if nothing was heard from it for
 * dropAfterMs, NO_PROGRESS if it wrote nothing for that long while receiving
 * (verifying is reading, not writing: only silence counts then). Receivers
 * that have ended are never dropped.
 */
export function liveness(stats: LivenessStats, now: number, dropAfterMs: number): DropReason | null {
  const active = stats.state === ReceiverState.JOINING || stats.state === ReceiverState.RECEIVING || stats.state === ReceiverState.VERIFYING;
  if (!active) return null;
  if (now - stats.lastHeardAt > dropAfterMs) return DropReason.SILENT;
  if (stats.state !== ReceiverState.VERIFYING && now - stats.lastProgressAt > dropAfterMs) return DropReason.NO_PROGRESS;
  return null;
}

/** A drop reason in words, for people. */
export function dropReasonText(reason: DropReason, dropAfterMs?: number): string {
  const after = dropAfterMs !== undefined ? ` for ${Math.round(dropAfterMs / 1000)} s` : ' for too long';
  switch (reason) {
    case DropReason.NO_PROGRESS:
      return `it made no progress${after}`;
    case DropReason.SILENT:
      return `nothing was heard from it${after}; it may have lost power or its network`;
    case DropReason.SESSION_ENDED:
      return 'the session ended';
    default:
      return 'it was dropped';
  }
}
