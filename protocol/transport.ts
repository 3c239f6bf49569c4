/**
 * The slice of a UDP socket the transfer engine uses. The daemons pass
 * node:dgram sockets; unit tests pass an in-memory network that drops,
 * duplicates and reorders (test/unit/fake-network.ts); the addon's batched
 * socket (transfer/batch-socket.ts) adds sendBatch and onBatch. Types, and
 * one table of constants.
 */

/** Where a datagram came from. */
export interface RemoteInfo {
  address: string;
  port: number;
  size: number;
}

/** A UDP socket as the engine uses it (a subset of dgram.Socket). */
export interface UdpSocket {
  bind(port: number, address: string | undefined, callback: () => void): void;
  send(msg: Buffer, port: number, address: string, callback?: (err: Error | null) => void): void;
  on(event: 'message', listener: (msg: Buffer, rinfo: RemoteInfo) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  addMembership(group: string, iface?: string): void;
  setMulticastInterface(iface: string): void;
  setMulticastTTL(ttl: number): void;
  setMulticastLoopback(on: boolean): void;
  setRecvBufferSize(size: number): void;
  setSendBufferSize(size: number): void;
  address(): { address: string; port: number };
  close(callback?: () => void): void;
  /**
   * Optional (transfer/batch-socket.ts): sends count packets in as few system calls as
   * the kernel allows. meta holds 4 numbers per packet: offset in packets, length,
   * IPv4 address as a 32-bit number, port. With signKey, each packet's last 16 bytes
   * are first set to its MAC under that key (protocol/mac.ts). Returns how many went
   * out; the rest found the socket's queue full (or the send failed) and were not sent.
   * packets may be reused as soon as it returns.
   */
  sendBatch?(packets: Buffer, meta: Uint32Array, count: number, signKey: Uint8Array | null): number;
  /**
   * Optional: from now on datagrams arrive in batches to listener instead of one
   * 'message' event each. With verify, the MAC of every datagram whose type byte
   * (offset 5) is in verify.types is checked under verify.key in the same pass.
   */
  onBatch?(listener: (batch: DatagramBatch) => void, verify?: { key: Uint8Array; types: number[] }): void;
}

/** What a datagram of a batch came with (DatagramBatch.meta, 4th number). */
export const BatchStatus = Object.freeze({ UNCHECKED: 0, MAC_OK: 1, MAC_BAD: 2, TRUNCATED: 3 } as const);

/**
 * Datagrams received together. Datagram i is data[i * slotSize, i * slotSize + length);
 * meta[4i .. 4i+3] = length, source IPv4 address as a 32-bit number, source port, BatchStatus.
 * data and meta are overwritten by the next batch: copy what must outlive the listener call.
 */
export interface DatagramBatch {
  readonly count: number;
  readonly data: Buffer;
  readonly slotSize: number;
  readonly meta: Uint32Array;
}

/** Makes a UDP socket; the default is node:dgram with reuseAddr. */
export type CreateSocket = () => UdpSocket;
