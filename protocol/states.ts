/**
 * The one vocabulary of states: what a machine is doing (its activity and,
 * inside a session, its transfer state), what a session and a capture are
 * in, which states are final and which moves are allowed. The server, the
 * CLI and the dashboard (which loads the compiled module as it is: it
 * imports nothing) all read these tables; nobody restates them.
 */

/** A machine's state as the server shows it. The names are those of control.proto's MachineState (lower case) plus `capturing`. */
export const MACHINE_STATES = Object.freeze([
  'offline', // no agent connection now
  'idle', // connected, doing nothing
  'assigned', // told to join a session, preparing its disk
  'waiting', // joined the group, waiting for the session to start
  'receiving',
  'verifying',
  'capturing', // reading its disk into an image
  'done', // written and verified
  'failed',
  'dropped', // the session gave up on it (no progress or no contact)
  'cancelled',
] as const);
export type MachineStateName = (typeof MACHINE_STATES)[number];

/** How a machine's part in a session ended. */
export const FINAL_MACHINE_STATES: ReadonlySet<string> = new Set<MachineStateName>(['done', 'failed', 'dropped', 'cancelled']);

/** A machine's part in a session: the moves allowed from each state (offline and back is always allowed before the end). */
const MACHINE_MOVES: Readonly<Record<string, readonly MachineStateName[]>> = Object.freeze({
  assigned: ['waiting', 'receiving', 'verifying', 'offline', 'done', 'failed', 'dropped', 'cancelled'],
  waiting: ['receiving', 'verifying', 'offline', 'done', 'failed', 'dropped', 'cancelled'],
  receiving: ['verifying', 'waiting', 'offline', 'done', 'failed', 'dropped', 'cancelled'],
  verifying: ['receiving', 'offline', 'done', 'failed', 'dropped', 'cancelled'],
  offline: ['assigned', 'failed', 'dropped', 'cancelled'],
});

/** True if a machine's part in a session may go from `from` to `to` (staying put is allowed). */
export function machineMoveAllowed(from: string, to: string): boolean {
  if (from === to) return true;
  return (MACHINE_MOVES[from] as readonly string[] | undefined)?.includes(to) ?? false;
}

/** What owns a machine at a time: nothing, one session, or one capture. */
export type Activity = { kind: 'idle' } | { kind: 'session'; id: number } | { kind: 'capture'; id: number };

/** The idle activity. */
export const IDLE: Activity = Object.freeze({ kind: 'idle' });

/** Two activities are the same holder. */
export function sameActivity(a: Activity, b: Activity): boolean {
  return a.kind === b.kind && (a.kind === 'idle' || a.id === (b as { id: number }).id);
}

/** An activity in words: "idle", "session 3", "capture 2". */
export function describeActivity(a: Activity): string {
  return a.kind === 'idle' ? 'idle' : `${a.kind} ${a.id}`;
}

/** A session's states. */
export const SESSION_STATES = Object.freeze(['waiting', 'running', 'done', 'failed', 'cancelled'] as const);
export type SessionState = (typeof SESSION_STATES)[number];
/** Sessions still holding machines. */
export const ACTIVE_SESSION_STATES: ReadonlySet<string> = new Set<SessionState>(['waiting', 'running']);
/** Sessions that have ended. */
export const FINAL_SESSION_STATES: ReadonlySet<string> = new Set<SessionState>(['done', 'failed', 'cancelled']);
const SESSION_MOVES: Readonly<Record<string, readonly SessionState[]>> = Object.freeze({
  waiting: ['running', 'failed', 'cancelled'],
  running: ['done', 'failed', 'cancelled'],
});

/** True if a session may go from `from` to `to`. */
export function sessionMoveAllowed(from: string, to: string): boolean {
  return (SESSION_MOVES[from] as readonly string[] | undefined)?.includes(to) ?? false;
}

/** A capture's states. */
export const CAPTURE_STATES = Object.freeze(['running', 'done', 'failed'] as const);
export type CaptureState = (typeof CAPTURE_STATES)[number];

/** A receiver's states on the multicast wire (protocol/mcast.ts ReceiverState), by code. */
export const RECEIVER_STATE_NAMES = Object.freeze(['joining', 'receiving', 'verifying', 'done', 'failed', 'dropped'] as const);
/** Final receiver states. */
export const FINAL_RECEIVER_STATES: ReadonlySet<string> = new Set(['done', 'failed', 'dropped']);
