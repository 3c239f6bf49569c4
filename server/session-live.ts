/**
 * A running session's live half: its manifest (as sent to agents, with its
 * SHA-256 and the disk digest a verified machine must report) and its
 * multicast sender; and the Assign that tells one machine how to join it.
 */
import type { Naming } from './session-naming.js';
export { namingFor } from './session-naming.js';
import { createHash, randomBytes } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { After, type Assign } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { chunkAt, diskDigest, encodeManifest, type Manifest } from '../protocol/manifest.js';
import { Sender } from '../transfer/sender.js';
import { dropReasonText, liveness } from '../transfer/policy.js';
import { DropReason, ReceiverState } from '../protocol/mcast.js';
import { FINAL_MACHINE_STATES } from '../protocol/states.js';
import type { SessionMachine, SessionRecord } from './session-types.js';
import type { Lock } from './store/lock.js';
import { currentRecords } from './store/recompress.js';
import type { Store } from './store/store.js';

/** A store whose reads may wait on something outside it: an edge's repository (server/repo/edge-store.ts). */
type MayStall = { stalledWithin?: (ms: number) => boolean };

/** What `after` means on the wire. */
export const AFTER = { wait: After.AFTER_WAIT, reboot: After.AFTER_REBOOT, poweroff: After.AFTER_POWEROFF } as const;

/** An active session's manifest and sender. */
export interface Live {
  manifest: Manifest;
  manifestBytes: Buffer;
  manifestSha: Buffer;
  digest: Buffer;
  /** The keyed digest a verified machine must report (result-digest.ts), being computed from the store; set by the manager. */
  expected?: Promise<Buffer>;
  sender: Sender;
  senderPort: number;
  /** A reader's lock on the store while the session runs: gc and recompress wait for it (a chunk's stored form never changes under a sender). */
  lock: Lock;
  /** True if the sender's reads waited on an edge's repository within the last ms: its machines made no progress through no fault of theirs. */
  stalled?: (ms: number) => boolean;
}

/**
 * A log call that says the same text at most once a minute: a sender whose
 * chunk cannot be read (an edge's repository away, a damaged object) asks
 * for it again and again, and the log should say so once, not every second.
 */
export function throttled<T>(log: (text: string) => void, text: (arg: T) => string, everyMs = 60_000): (arg: T) => void {
  const said = new Map<string, number>();
  return (arg) => {
    const t = text(arg);
    const now = performance.now();
    if (now - (said.get(t) ?? -Infinity) < everyMs) return;
    if (said.size > 256) said.clear();
    said.set(t, now);
    log(t);
  };
}

/** Stops the session's sender and lets go of its store lock. */
export function closeLive(live: Live): void {
  live.sender.stop();
  live.lock.release();
}

/** Reads the session's manifest and starts its sender, held until the start rule releases it. */
export async function openLive(store: Store, s: SessionRecord, senderAddress: string, manifest: Manifest | undefined, wire: (sender: Sender) => void, warn?: (message: string) => void): Promise<Live> {
  const lock = lockForSession(store, s, warn);
  let sender: Sender | undefined;
  try {
    const m = manifest ?? (await store.readManifest(s.image, s.version));
    await currentRecords(store, m); // receivers count fragments from the stored lengths it announces
    await store.warm(m); // an edge fetches the chunks it lacks while the sender streams (or refuses at once if it cannot)
    const manifestBytes = encodeManifest(m);
    if (!/^[0-9a-f]{64}$/.test(s.secret ?? '')) s.secret = randomBytes(32).toString('hex'); // saved before secrets existed
    sender = new Sender({
      manifest: m,
      loadChunk: (i) => store.readChunk(chunkAt(m.table, i).sha256),
      group: s.group,
      port: s.port,
      address: senderAddress,
      session: s.key,
      hold: true,
      rateMbit: s.rateMbit ?? undefined,
      fragmentSize: s.fragmentSize,
      secret: Buffer.from(s.secret, 'hex'),
      encrypt: s.encrypt === true,
    });
    wire(sender);
    let senderPort: number;
    try {
      senderPort = await sender.start();
    } catch (err) {
      throw new ClonecastError(ERR.USAGE, `the multicast sender cannot use ${senderAddress}: ${(err as Error).message}; check --interface`);
    }
    return { manifest: m, manifestBytes, manifestSha: createHash('sha256').update(manifestBytes).digest(), digest: diskDigest(m), sender, senderPort, lock, stalled: (ms) => (store as MayStall).stalledWithin?.(ms) === true };
  } catch (err) {
    sender?.stop();
    lock.release();
    throw err;
  }
}

/**
 * Recompress rewrites stored forms and gc deletes chunk files: neither may run while a sender
 * reads them, so a session holds a reader's lock. One that cannot be written (the store's disk
 * is full or read-only) does not stop the session: it runs unlocked, and says so.
 */
function lockForSession(store: Store, s: SessionRecord, warn?: (message: string) => void): Lock {
  try {
    return store.lockReader(`sending session ${s.id} (${s.image}@${s.version})`);
  } catch (err) {
    if (err instanceof ClonecastError) throw err; // busy: gc or recompress runs now
    warn?.(`the store's lock for this session could not be written (${(err as Error).message}); gc and recompress cannot see it: do not run them until it ends`);
    return { path: '', release: () => undefined };
  }
}

/** The Assign for one machine of a session. */
export function assignment(s: SessionRecord, m: SessionMachine, live: Live, senderAddress: string, resume: boolean, naming: Naming): Assign {
  return {
    ...naming,
    sessionId: s.id,
    image: s.image,
    version: s.version,
    imageSize: s.imageSize,
    device: m.device,
    group: s.group,
    port: s.port,
    senderAddress,
    senderPort: live.senderPort,
    sessionKey: s.key,
    fragmentSize: s.fragmentSize,
    receiverId: m.receiverId,
    dataKey: live.sender.dataKey,
    receiverKey: live.sender.receiverKeyFor(m.receiverId),
    encryptKey: s.encrypt === true ? live.sender.encryptKey : new Uint8Array(0),
    after: AFTER[s.after],
    manifestPath: `/api/sessions/${s.id}/manifest`,
    manifestSha256: live.manifestSha,
    verify: s.verify,
    finalVerify: s.finalVerify === true,
    discard: s.discard === true,
    growLast: s.growLast === true,
    resume,
    nonce: Buffer.from(s.nonce, 'hex'),
  };
}

/**
 * Lets machine m's receiver into the session's sender: its reports must carry a
 * MAC under its own key, and the sender's ACKs and any unicast data go to
 * address (where its control connection comes from) and nowhere else.
 */
export function admit(live: Live, m: SessionMachine, address: string): void {
  // An agent reached over IPv6 has no IPv4 address here: its answers then go where its authenticated reports come from.
  live.sender.admit(m.receiverId, live.sender.receiverKeyFor(m.receiverId), isIPv4(address) ? address : undefined);
}

/**
 * Copies the sender's counters into the session and applies the one
 * liveness rule to its receivers: a receiver of a machine still in the
 * session that is silent or makes no progress for dropAfterMs is dropped.
 */
export function pollLive(s: SessionRecord, live: Live, dropAfterMs: number): void {
  const c = live.sender.counters;
  s.sent = { bytes: c.bytesSent, packets: c.packetsSent, repairPackets: c.repairPackets };
  const mine = new Set(Object.values(s.machines).filter((m) => !FINAL_MACHINE_STATES.has(m.state)).map((m) => m.receiverId));
  const at = performance.now();
  for (const r of live.sender.receivers()) {
    const reason = mine.has(r.receiverId) ? liveness(r, at, dropAfterMs) : null;
    if (reason === DropReason.NO_PROGRESS && live.stalled?.(dropAfterMs) === true) continue; // waiting for the repository, not stuck
    if (reason !== null) live.sender.drop(r.receiverId, reason);
  }
}

/** Machines of the session whose control connection has been gone for dropAfterMs (the same liveness rule), with why. */
export function lostMachines(s: SessionRecord, now: number, dropAfterMs: number): [string, string][] {
  const lost: [string, string][] = [];
  for (const [id, m] of Object.entries(s.machines)) {
    if (m.state !== 'offline') continue;
    const reason = liveness({ state: ReceiverState.RECEIVING, lastHeardAt: m.offlineSince, lastProgressAt: m.offlineSince }, now, dropAfterMs);
    if (reason !== null) lost.push([id, `no contact with its agent: ${dropReasonText(reason, dropAfterMs)}`]);
  }
  return lost;
}
