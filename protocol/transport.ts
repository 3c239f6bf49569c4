/**
 * The slice of a UDP socket the transfer engine uses. The daemons pass
 * node:dgram sockets; unit tests pass an in-memory network that drops,
 * duplicates and reorders (test/unit/fake-network.ts). Types only.
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
}

/** Makes a UDP socket; the default is node:dgram with reuseAddr. */
export type CreateSocket = () => UdpSocket;
