/**
 * What the agent tells the server about its work: the Progress of a running
 * job (state and counters since the last report) and the Result at its end
 * (with the disk digest keyed by the Assign's nonce).
 */
import { MachineState, type Assign, type Progress, type Result } from '../protocol/control.js';
import { ERR, isError, type ClonecastError } from '../protocol/errors.js';
import { ReceiverState } from '../protocol/mcast.js';
import type { Receiver, ReceiverResult, Verification } from '../transfer/receiver.js';

/** One session the agent is working on. */
export interface Job {
  assign: Assign;
  receiver: Receiver;
  running: Promise<void>;
  startedAt: number;
  lastBytes: number;
  lastPackets: number;
  lastLost: number;
  lastAt: number;
  state: MachineState;
}

/** The job's Progress now, its machine state, and the counters to remember for the next report. */
export function progressOf(job: Job): { progress: Progress; state: MachineState; sample: Pick<Job, 'lastAt' | 'lastBytes' | 'lastPackets' | 'lastLost'> } {
  const p = job.receiver.progress();
  const c = job.receiver.counters;
  const now = performance.now();
  const dt = (now - job.lastAt) / 1000;
  const packets = c.packets - job.lastPackets;
  const lost = c.lost - job.lastLost;
  const rate = dt > 0 ? (c.bytesWritten - job.lastBytes) / dt : 0;
  const state =
    p.state === ReceiverState.VERIFYING || p.state === ReceiverState.DONE
      ? MachineState.STATE_VERIFYING
      : p.state === ReceiverState.RECEIVING
        ? c.packets === 0 && p.done === p.skipped
          ? // Waiting (joined, counted by the start rule) once the sender has answered: it then knows what this machine needs.
            p.ready
            ? MachineState.STATE_WAITING
            : MachineState.STATE_ASSIGNED
          : MachineState.STATE_RECEIVING
        : MachineState.STATE_ASSIGNED;
  const progress: Progress = {
    sessionId: job.assign.sessionId,
    state,
    chunksDone: p.done,
    chunksTotal: p.wanted,
    bytesWritten: c.bytesWritten,
    rateBps: Math.max(0, Math.round(rate)),
    loss: packets + lost > 0 ? Math.min(1, lost / (packets + lost)) : 0,
    nacks: c.nacksSent,
    skipped: p.skipped,
  };
  return { progress, state, sample: { lastAt: now, lastBytes: c.bytesWritten, lastPackets: c.packets, lastLost: c.lost } };
}

/** The Result of a job that ended with r, or with err. */
export function resultOf(a: Assign, r: ReceiverResult | undefined, err: unknown, seconds: number): Result {
  const v = (r?.verification ?? (err as ClonecastError | undefined)?.details?.verification) as Verification | undefined;
  let state: MachineState = MachineState.STATE_DONE;
  if (err !== undefined) {
    state = isError(err, ERR.CANCELLED) ? MachineState.STATE_CANCELLED : isError(err, ERR.DROPPED) ? MachineState.STATE_DROPPED : MachineState.STATE_FAILED;
  }
  return {
    sessionId: a.sessionId!,
    state,
    verified: err === undefined && r?.verification !== undefined,
    chunksVerified: v?.chunksVerified ?? 0,
    chunksBad: v?.chunksBad ?? 0,
    badChunks: v?.bad ?? [],
    // Keyed by the Assign's nonce when it has one (transfer/verifier.ts KeyedDigest): the server checks that one.
    diskDigest: v?.keyed ?? v?.digest ?? new Uint8Array(0),
    error: err === undefined ? '' : (err as Error).message,
    seconds,
    bytesWritten: r?.bytesWritten ?? 0,
    device: a.device ?? '',
    skipped: r?.skipped ?? 0,
  };
}
