/**
 * What a session is made of (its record as saved and shown, each machine's
 * part, the request that makes one) and the small pure functions over them:
 * group slots, receiver ids, ETA, the counters of a progress report and the
 * judgement of a final result.
 */
import { checkFinishOptions } from './session-finish.js';
import { randomBytes } from 'node:crypto';
import { MachineState, stateName, type Assign, type Progress, type Result } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Manifest } from '../protocol/manifest.js';
import { MCAST } from '../protocol/mcast.js';
import type { Activity, MachineStateName, SessionState } from '../protocol/states.js';
import { TRANSFER_DEFAULTS } from '../transfer/session.js';
import type { Registry, TransferCounts } from './registry.js';
import { parseRef, type ImageRef, type Store } from './store/store.js';
import type { StartRule } from './session-rules.js';

/** What `deploy` asks for. */
export interface SessionRequest {
  /** NAME or NAME@VERSION. */
  image: string;
  rule?: StartRule;
  rateMbit?: number;
  after?: 'wait' | 'reboot' | 'poweroff';
  /** "auto" (default) or a device path. */
  target?: string;
  verify?: boolean;
  /** Also read each whole disk back once more at the end (every chunk is read back after its write anyway). */
  finalVerify?: boolean;
  /** Trim the image's unused chunks on each disk (server/session-finish.ts). */
  discard?: boolean;
  /** After a verified write, grow the last partition and its filesystem to the end of a larger disk. */
  growLast?: boolean;
  /** Write each machine's registry name into the deployed systems (default true: machines that have names get them). */
  nameMachines?: boolean;
  /** A machine without progress or contact this long is dropped. */
  dropAfterS?: number;
  fragmentSize?: number;
  /**
   * Differential restore: agents check what their disk already holds and receive only the
   * rest. true forces it, false forbids it; undefined: automatic, for a machine whose disk
   * the registry says last received a version of the same image.
   */
  differential?: boolean;
  /** Seal every chunk with AES-256-GCM on the wire (images that hold secrets). */
  encrypt?: boolean;
}

/** One machine's part of a session. */
export interface SessionMachine extends TransferCounts {
  state: string;
  /** The MAC by which the start rule named it ('' if the rule names none). */
  mac: string;
  device: string;
  error: string;
  verified: boolean;
  digestOk: boolean | null;
  chunksVerified: number;
  chunksBad: number;
  seconds: number;
  joinedAt: string;
  endedAt: string | null;
  /** ms since epoch when it went offline; 0 while connected. */
  offlineSince: number;
  /** The id its receiver uses on the wire (the Assign's receiver_id): chosen once, kept across reassignments. */
  receiverId: number;
}

export type { SessionState };

/** A session as saved and as the API shows it. */
export interface SessionRecord {
  id: number;
  /** The multicast session number on the wire. */
  key: number;
  /**
   * The session secret, hex (32 bytes): the data key and every receiver's key derive from it
   * (protocol/mac.ts), so a restarted server keeps them. Never shown: the API leaves it out (shown()).
   */
  secret: string;
  image: string;
  version: number;
  imageSize: number;
  group: string;
  port: number;
  rule: StartRule;
  rateMbit: number | null;
  after: 'wait' | 'reboot' | 'poweroff';
  target: string;
  verify: boolean;
  /** A final whole-disk pass after the per-chunk read-back (absent in sessions saved before it existed: false). */
  finalVerify?: boolean;
  /** Discard unused chunks; grow the last partition (absent in sessions saved before they existed: false). */
  discard?: boolean;
  growLast?: boolean;
  /** false: machines are not named (absent in sessions saved before naming: named). */
  nameMachines?: boolean;
  dropAfterS: number;
  fragmentSize: number;
  differential: boolean | null;
  /** Chunks are sealed with AES-256-GCM on the wire (absent in sessions saved before it existed: false). */
  encrypt?: boolean;
  state: SessionState;
  reason: string;
  createdAt: string;
  firstJoinAt: string | null;
  startedAt: string | null;
  endedAt: string | null;
  machines: Record<string, SessionMachine>;
  sent: { bytes: number; packets: number; repairPackets: number };
  /** 16 random bytes (hex), in every Assign of the session: the key of the disk digest its machines report. */
  nonce: string;
}

/** How the session manager reaches agents. */
export interface AgentLink {
  /** Sends an assignment or a cancel to a connected machine; false if it is not connected. */
  send(machineId: string, message: { type: 'assign'; assign: Assign } | { type: 'cancel'; cancel: { sessionId: number; reason: string } }): boolean;
}

/** Options of SessionManager. */
export interface SessionManagerOptions {
  store: Store;
  registry: Registry;
  agents: AgentLink;
  /** Local IPv4 address the senders use (picks the multicast interface); undefined: deploy is refused. */
  senderAddress: string | undefined;
  log?: (level: 'info' | 'warn', message: string) => void;
  /** Housekeeping interval, ms (counters, liveness, lost machines); start rules do not wait for it. Default SESSION_DEFAULTS.tickMs. */
  tickMs?: number;
}

/** Defaults of sessions; tickMs: the housekeeping interval of SessionManagerOptions. */
export const SESSION_DEFAULTS = Object.freeze({ dropAfterS: TRANSFER_DEFAULTS.dropAfterMs / 1000, fragmentSize: TRANSFER_DEFAULTS.fragmentSize, port: TRANSFER_DEFAULTS.port, keep: 200, tickMs: 1000 });

/** The activity by which a session holds its machines in the registry. */
export function holder(s: SessionRecord): Activity {
  return { kind: 'session', id: s.id };
}

/** Multicast group of session slot n, inside 239.77.0.0/16. */
export function groupFor(n: number): string {
  const k = (n - 1) % (254 * 254);
  return `239.77.${1 + Math.floor(k / 254)}.${1 + (k % 254)}`;
}

export function parseImage(image: unknown): ImageRef {
  if (typeof image !== 'string' || image.length === 0) throw new ClonecastError(ERR.USAGE, 'a session needs an image, NAME or NAME@VERSION');
  return parseRef(image);
}

/** A random non-zero receiver id that no other machine of the session has. */
export function newReceiverId(s: SessionRecord): number {
  const used = new Set(Object.values(s.machines).map((m) => m.receiverId));
  for (;;) {
    const id = randomBytes(4).readUInt32BE(0);
    if (id !== 0 && !used.has(id)) return id;
  }
}

/** Seconds left at the current rate, counting a full chunk for each one missing. */
export function eta(m: Pick<SessionMachine, 'chunksDone' | 'chunksTotal' | 'rateBps'>, manifest: Manifest | undefined): number | null {
  if (m.rateBps <= 0 || manifest === undefined || m.chunksTotal === 0) return null;
  return Math.ceil(((m.chunksTotal - m.chunksDone) * manifest.meta.chunkSize) / m.rateBps);
}

/** The transfer counters of a Progress message (each already range-checked by protocol/control.ts). */
export function countsOf(p: Progress): TransferCounts {
  return {
    chunksDone: p.chunksDone ?? 0,
    chunksTotal: p.chunksTotal ?? 0,
    bytesWritten: p.bytesWritten ?? 0,
    rateBps: p.rateBps ?? 0,
    loss: p.loss ?? 0,
    nacks: p.nacks ?? 0,
    skipped: p.skipped ?? 0,
  };
}

/**
 * How a machine ended, from its agent's Result: "done" stands only when the
 * agent verified its disk and the digest it read back is the image's, keyed
 * by the session's nonce (`digest`, computed by the server from its store:
 * server/result-digest.ts; undefined when it could not be).
 */
export function judgeResult(s: SessionRecord, m: SessionMachine, r: Result, digest: Buffer | undefined): Partial<SessionMachine> {
  let state = stateName(r.state ?? MachineState.STATE_FAILED) as MachineStateName;
  let error = r.error ?? '';
  let digestOk: boolean | null = null;
  if (state === 'done' && s.verify) {
    digestOk = digest !== undefined && r.diskDigest !== undefined && r.diskDigest !== null && Buffer.from(r.diskDigest).equals(digest);
    if (!r.verified || !digestOk) {
      state = 'failed';
      error = !r.verified
        ? 'the agent did not verify the disk'
        : digest === undefined
          ? 'the server could not compute the digest to check the result against (see its log)'
          : "the disk digest the agent read back (keyed by the session's nonce) does not match the image; the disk may be failing, or the agent did not read what it reports";
    }
  }
  return {
    state,
    error,
    digestOk,
    verified: (r.verified ?? false) && digestOk !== false,
    chunksVerified: r.chunksVerified ?? 0,
    chunksBad: r.chunksBad ?? 0,
    seconds: r.seconds ?? 0,
    bytesWritten: Math.max(m.bytesWritten, r.bytesWritten ?? 0),
    skipped: Math.max(m.skipped, r.skipped ?? 0),
    chunksDone: state === 'done' ? m.chunksTotal : m.chunksDone,
  };
}

/** A new session's record; the request's numbers and names are checked here, as they come from the network. */
export function newRecord(id: number, slot: number, image: string, version: number, imageSize: number, rule: StartRule, after: SessionRecord['after'], req: SessionRequest): SessionRecord {
  const num = (v: unknown, what: string, min: number, max: number): number | undefined => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new ClonecastError(ERR.USAGE, `${what} must be a number from ${min} to ${max}`);
    return v;
  };
  const target = req.target ?? 'auto';
  if (typeof target !== 'string' || (target !== 'auto' && !/^\/[\x21-\x7e]{1,255}$/.test(target))) throw new ClonecastError(ERR.USAGE, 'target must be "auto" or a device path such as /dev/sda');
  if (req.verify !== undefined && typeof req.verify !== 'boolean') throw new ClonecastError(ERR.USAGE, 'verify must be true or false');
  if (req.finalVerify !== undefined && typeof req.finalVerify !== 'boolean') throw new ClonecastError(ERR.USAGE, 'finalVerify must be true or false');
  checkFinishOptions(req);
  if (req.nameMachines !== undefined && typeof req.nameMachines !== 'boolean') throw new ClonecastError(ERR.USAGE, 'nameMachines must be true or false');
  if (req.differential !== undefined && req.differential !== null && typeof req.differential !== 'boolean') throw new ClonecastError(ERR.USAGE, 'differential must be true or false');
  if (req.encrypt !== undefined && typeof req.encrypt !== 'boolean') throw new ClonecastError(ERR.USAGE, 'encrypt must be true or false');
  return {
    id,
    key: randomBytes(4).readUInt32BE(0),
    secret: randomBytes(32).toString('hex'),
    image,
    version,
    imageSize,
    group: groupFor(slot),
    port: SESSION_DEFAULTS.port + (slot % 1000),
    rule,
    rateMbit: num(req.rateMbit, 'rateMbit', 1, 100_000) ?? null,
    after,
    target,
    verify: req.verify ?? true,
    finalVerify: req.finalVerify === true,
    discard: req.discard === true,
    growLast: req.growLast === true,
    nameMachines: req.nameMachines !== false,
    dropAfterS: num(req.dropAfterS, 'dropAfterS', 1, 86_400) ?? SESSION_DEFAULTS.dropAfterS,
    fragmentSize: Math.round(num(req.fragmentSize, 'fragmentSize', MCAST.MIN_FRAGMENT, MCAST.MAX_FRAGMENT) ?? SESSION_DEFAULTS.fragmentSize),
    differential: typeof req.differential === 'boolean' ? req.differential : null,
    encrypt: req.encrypt === true,
    state: 'waiting',
    reason: '',
    createdAt: new Date().toISOString(),
    firstJoinAt: null,
    startedAt: null,
    endedAt: null,
    machines: {},
    sent: { bytes: 0, packets: 0, repairPackets: 0 },
    nonce: randomBytes(16).toString('hex'),
  };
}

/** A session as the API and the dashboard show it: without its secret. */
export function shown<T extends Partial<Pick<SessionRecord, 'secret'>>>(s: T): Omit<T, 'secret'> {
  const { secret: _secret, ...rest } = s;
  return rest;
}
