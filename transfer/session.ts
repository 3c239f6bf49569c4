/**
 * Engine vocabulary shared by the server and the agent: what a receiver must
 * know to join a session, and the one set of transfer defaults.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { MCAST } from '../protocol/mcast.js';

/** A receiver's id without one from the server: a hash of host, interface and target. */
export function defaultReceiverId(interfaceAddress: string | undefined, target: string): number {
  return createHash('sha256').update(`${hostname()}|${interfaceAddress ?? ''}|${target}`).digest().readUInt32BE(0);
}

/** What a receiver needs to know about a session (the sender publishes it). */
export interface SessionInfo {
  /** The multicast session number on the wire. */
  session: number;
  group: string;
  port: number;
  sender: { address: string; port: number };
  fragmentSize: number;
  /** Chunks are sealed with AES-256-GCM (the key is not here: receivers derive it from the session secret or get it in the Assign). */
  encrypted?: boolean;
}

/** Defaults every user of the engine shares (server sessions, `clonecast send`, the sender). */
export const TRANSFER_DEFAULTS = Object.freeze({
  /** Default multicast group (inside the lab's 239.77.0.0/16). */
  group: '239.77.0.1',
  /** Data port of the first session; the server adds a session slot to it. */
  port: 9000,
  /** Payload bytes per data packet: a 1500-byte Ethernet MTU less IP, UDP and our header. */
  fragmentSize: MCAST.DEFAULT_FRAGMENT,
  /** Smallest and largest fragment (the largest fits a 9000-byte jumbo frame). */
  minFragment: MCAST.MIN_FRAGMENT,
  maxFragment: MCAST.MAX_FRAGMENT,
  /** A receiver without progress or word this long is dropped (policy.ts liveness). */
  dropAfterMs: 60_000,
  /** Sending rate when none is given, Mbit/s. */
  rateMbit: 1000,
});

/** True if n is a fragment size the engine accepts. */
export function validFragmentSize(n: number): boolean {
  return Number.isInteger(n) && n >= TRANSFER_DEFAULTS.minFragment && n <= TRANSFER_DEFAULTS.maxFragment;
}
