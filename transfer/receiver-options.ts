/**
 * What a receiver is given and what it gives back: its options and their
 * defaults, its counters, its result. (The Receiver class is in receiver.ts.)
 */
import type { CreateSocket } from '../protocol/transport.js';
import type { Manifest } from '../protocol/manifest.js';
import type { SessionInfo } from './session.js';
import type { Verification } from './verifier.js';

/** Defaults of ReceiverOptions. */
export const RECEIVER_DEFAULTS = Object.freeze({
  /** Decoded chunks waiting for the disk. */
  queueChunks: 8,
  /** Chunks being reassembled at once (each holds a chunk-sized buffer from a pool). */
  maxPartials: 16,
  /** Report interval floor, ms; it grows to 2 round-trip times on slow links. */
  reportMs: 100,
  /** Give up if the sender is silent this long. */
  timeoutMs: 60_000,
  /** Most NACKs in one STATUS. */
  maxNacks: 6,
});

/** How to run a receiver. */
export interface ReceiverOptions {
  session: SessionInfo;
  manifest: Manifest;
  /** Disk or file to write. */
  target: string;
  force?: boolean;
  /** Local IPv4 address of the interface to join the group on. */
  interfaceAddress?: string;
  /** The id the server gave this receiver (the Assign's receiver_id); without one, a hash of host, interface and target. */
  receiverId?: number;
  /**
   * The packet keys (32 bytes each): data, the session's (every DATA packet's MAC); receiver,
   * this receiver's own (its STATUS and the ACKs to it). The Assign's data_key and receiver_key.
   */
  keys: { data: Uint8Array; receiver: Uint8Array; encrypt?: Uint8Array };
  /** Benchmarks only: check no MACs and send none (measures what authentication costs). */
  unauthenticated?: boolean;
  /** Check which chunks the target already holds and skip them. */
  resume?: boolean;
  /** Chunks this process already wrote to the target in an earlier run (one byte per chunk, non-zero: written and checked). */
  known?: Uint8Array;
  /** Read every chunk back after writing it and check it (default true; readback.ts). */
  verify?: boolean;
  /** Also read the whole disk back once more at the end, and report that pass (default false). */
  finalVerify?: boolean;
  /** Trim the image's unused chunks on the target instead of leaving what it holds (zero.ts). */
  discard?: boolean;
  /** The Assign's nonce: the read-back also computes the keyed disk digest (verifier.ts KeyedDigest). */
  nonce?: Uint8Array;
  queueChunks?: number;
  maxPartials?: number;
  timeoutMs?: number;
  /** Ask for data by unicast from the start (a site multicast cannot reach); otherwise automatic. */
  unicast?: boolean;
  /** Emulates a slow disk: at most this many bytes per second written (tests and demos). */
  writeLimit?: number;
  createSocket?: CreateSocket;
}

/** Counters for progress and tests. */
export interface ReceiverCounters {
  packets: number;
  lost: number;
  duplicates: number;
  chunksWritten: number;
  bytesWritten: number;
  queueFullDrops: number;
  evictions: number;
  /** STATUS packets that asked for stripe repairs (per-stripe counts; the name is from the NACKs they replaced). */
  nacksSent: number;
  /** Parity packets taken, and data fragments rebuilt from parity. */
  parity: number;
  rebuilt: number;
  statusSent: number;
  /** Chunks that read back wrong and were fetched and written again. */
  rewritten: number;
  /** badMac: the packet's MAC did not verify (nothing else of it was looked at); badChunk: a chunk failed the manifest's checks (xxh64, then SHA-256) and was not written. */
  rejected: { malformed: number; foreign: number; otherSession: number; badMac: number; badChunk: number; version: number };
}

/** What a receiver did. */
export interface ReceiverResult {
  receiver: number;
  chunks: number;
  skipped: number;
  /** What reading the disk back found (absent with verify: false). */
  verification?: Verification;
  bytesWritten: number;
  seconds: number;
  verified: boolean;
  /** Smoothed round-trip time to the sender, ms. */
  rttMs: number;
  counters: ReceiverCounters;
}

/** A new receiver's counters, all zero. */
export function zeroCounters(): ReceiverCounters {
  return {
    packets: 0,
    lost: 0,
    duplicates: 0,
    chunksWritten: 0,
    bytesWritten: 0,
    queueFullDrops: 0,
    evictions: 0,
    nacksSent: 0,
    parity: 0,
    rebuilt: 0,
    statusSent: 0,
    rewritten: 0,
    rejected: { malformed: 0, foreign: 0, otherSession: 0, badMac: 0, badChunk: 0, version: 0 },
  };
}
