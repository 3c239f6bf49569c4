/**
 * What a sender is given and what it counts: its options and their
 * defaults, its counters, the drop event. (The Sender class is in sender.ts.)
 */
import type { DropReason } from '../protocol/mcast.js';
import type { Manifest } from '../protocol/manifest.js';
import type { CreateSocket } from '../protocol/transport.js';
import type { ReceiverStats } from './peers.js';
import { TRANSFER_DEFAULTS } from './session.js';

/** Defaults of SenderOptions. */
export const SENDER_DEFAULTS = Object.freeze({
  rateMbit: TRANSFER_DEFAULTS.rateMbit,
  fragmentSize: TRANSFER_DEFAULTS.fragmentSize,
  /** Stored chunks kept in memory for repairs and late joiners. */
  cacheChunks: 48,
  ttl: 1,
  /** Receivers the sender keeps at most (admitted ones, or with openAdmission those heard from). */
  maxPeers: 1024,
  /** A receiver that ended (done, failed, dropped) and stays silent this long is forgotten. */
  forgetEndedMs: 10_000,
  /** Any receiver silent this long is forgotten (the liveness policy has dropped it long before). */
  forgetSilentMs: 300_000,
});

/** How to run a sender. */
export interface SenderOptions {
  manifest: Manifest;
  /** Returns chunk i's stored form (header + payload, no padding). */
  loadChunk: (index: number) => Promise<Buffer>;
  group: string;
  port: number;
  /** Local IPv4 address to send from (picks the interface). */
  address: string;
  session?: number;
  /** Send nothing until release() (the caller applies a start rule); otherwise send as soon as anyone needs data. */
  hold?: boolean;
  rateMbit?: number;
  fragmentSize?: number;
  cacheChunks?: number;
  ttl?: number;
  /** With one receiver left needing data, send to it by unicast (default true). */
  unicastSingle?: boolean;
  /** The session secret (32 bytes; default random): the data key and the receivers' keys derive from it (protocol/mac.ts). */
  secret?: Uint8Array;
  /**
   * Take any receiver whose STATUS carries a MAC under the key derived from the secret
   * for its id (`clonecast send`, where every receiver holds the secret); otherwise only
   * receivers given to admit() are served (the server's sessions).
   */
  openAdmission?: boolean;
  maxPeers?: number;
  /** Seal every chunk with AES-256-GCM under the key derived from the secret (transfer/seal.ts; encryptKey). */
  encrypt?: boolean;
  /** Benchmarks only: send no MACs and check none (measures what authentication costs). */
  unauthenticated?: boolean;
  createSocket?: CreateSocket;
  /** Parity indexes used per stripe (default MCAST.MAX_PARITY); past them a stripe is repaired by its data fragments again. */
  maxParity?: number;
  /** Proactive parity packets per stripe on each chunk's first send; undefined: from the measured loss (parity.ts). */
  proactiveParity?: number;
}


/** A receiver given up: its id and the typed reason (the 'drop' event). */
export interface DropEvent {
  receiverId: number;
  reason: DropReason;
  stats: ReceiverStats;
}

/** Counters for the dashboard and tests. */
export interface SenderCounters {
  /** Seconds from the first to the last data packet. */
  sendingSeconds: number;
  packetsSent: number;
  bytesSent: number;
  chunksSent: number;
  repairPackets: number;
  /** Parity packets sent (proactive and repairs). */
  parityPackets: number;
  /** Repairs sent (one per chunk per repair pick). */
  repairRounds: number;
  /** Data packets sent by unicast to a sole receiver. */
  unicastPackets: number;
  statusReceived: number;
  /** unknownReceiver: not admitted (or the table is full); badMac: the MAC did not verify. */
  /** version: a packet of this protocol in another version (an old or new receiver). */
  dropped: { malformed: number; otherSession: number; unexpected: number; unknownReceiver: number; badMac: number; version: number };
  /** Receivers forgotten after they ended or went silent. */
  forgotten: number;
  sendErrors: number;
}

