/**
 * Where the sender's data packets go out (every DATA packet, and any other
 * packet under the session's data key, passes through here). A packet is
 * encoded into slot(), queued with commit(), and flush() at the end of a
 * pacer tick sends what was queued: with a batching socket, in one call that
 * signs them all and hands them to the kernel in one sendmmsg (runs as UDP
 * GSO), from one preallocated buffer; otherwise one signed datagram at a time
 * through send(), each in its own buffer (dgram and the in-memory test network
 * keep the buffer until the send completes).
 */
import type { MacKey } from '../protocol/mac.js';
import type { UdpSocket } from '../protocol/transport.js';
import { ipv4ToNumber } from './batch-socket.js';

/** Packets one flush can hold; a tick that queues more flushes early. */
export const OUTBOX_PACKETS = 256;

/** Batches outgoing data packets for one socket. */
export class Outbox {
  /** Packets sent by the socket, and ones refused (queue full, or the send failed). */
  sent = 0;
  refused = 0;
  private readonly batching: boolean;
  private readonly ring: Buffer;
  private readonly meta = new Uint32Array(4 * OUTBOX_PACKETS);
  private count = 0;
  private used = 0;
  private pending: Buffer | undefined;
  private readonly addresses = new Map<string, number>();

  /**
   * maxPacket: the largest datagram slot() is asked for. key signs each packet (null: unsigned).
   * refused(n) is told of packets that did not go out (the rate rule backs off on it).
   */
  constructor(
    private readonly socket: UdpSocket,
    private readonly maxPacket: number,
    private readonly key: { mac: MacKey; raw: Uint8Array } | null,
    private readonly onRefused: (n: number) => void,
  ) {
    this.batching = socket.sendBatch !== undefined;
    this.ring = Buffer.allocUnsafe(this.batching ? maxPacket * OUTBOX_PACKETS : 0);
  }

  /** A buffer of maxPacket bytes to encode the next packet into (the MAC's 16 bytes included). */
  slot(): Buffer {
    if (!this.batching) return (this.pending = Buffer.allocUnsafe(this.maxPacket));
    if (this.count === OUTBOX_PACKETS || this.used + this.maxPacket > this.ring.length) this.flush();
    return (this.pending = this.ring.subarray(this.used, this.used + this.maxPacket));
  }

  /** Queues the first length bytes of the last slot() for port and address; its MAC is written when it is sent. */
  commit(length: number, port: number, address: string): void {
    const packet = this.pending!;
    this.pending = undefined;
    if (!this.batching) {
      this.key?.mac.sign(packet, length);
      this.socket.send(packet.subarray(0, length), port, address, (err) => {
        if (err) {
          this.refused++;
          this.onRefused(1);
        } else this.sent++;
      });
      return;
    }
    let ip = this.addresses.get(address);
    if (ip === undefined) {
      ip = ipv4ToNumber(address);
      if (this.addresses.size > 1024) this.addresses.clear();
      this.addresses.set(address, ip);
    }
    const m = 4 * this.count++;
    this.meta[m] = this.used;
    this.meta[m + 1] = length;
    this.meta[m + 2] = ip;
    this.meta[m + 3] = port;
    this.used += length;
  }

  /** Sends what is queued. */
  flush(): void {
    if (this.count === 0) return;
    const count = this.count;
    this.count = 0;
    this.used = 0;
    const n = this.socket.sendBatch!(this.ring, this.meta, count, this.key?.raw ?? null);
    this.sent += n;
    if (n < count) {
      this.refused += count - n;
      this.onRefused(count - n);
    }
  }
}
