/**
 * The real transport: the addon's batched UDP socket (transfer/batch-socket.ts)
 * when the addon is built, else node:dgram; both with reuseAddr and the largest
 * socket buffers the kernel allows (net.core.rmem_max caps them; 4 MiB here).
 */
import { createSocket as dgramSocket } from 'node:dgram';
import { nativeIfBuilt } from '../native/addon.js';
import type { CreateSocket, UdpSocket } from '../protocol/transport.js';
import { BatchSocket } from './batch-socket.js';

/** Socket buffer size asked for; the kernel clamps it to rmem_max/wmem_max. */
export const SOCKET_BUFFER = 8 << 20;

/** Creates an IPv4 UDP socket for the transfer engine: batched through the addon when it is built, else node:dgram. */
export const createUdpSocket: CreateSocket = () => {
  const addon = nativeIfBuilt();
  if (addon !== null && typeof addon.udpbOpen === 'function') return new BatchSocket(addon);
  return createDgramSocket();
};

/** A node:dgram socket with reuseAddr (one datagram per call; no batching). */
export const createDgramSocket: CreateSocket = () => dgramSocket({ type: 'udp4', reuseAddr: true }) as unknown as UdpSocket;

/** Raises a bound socket's buffers as far as allowed; failures are harmless. */
export function growBuffers(socket: UdpSocket): void {
  for (const set of [(n: number) => socket.setRecvBufferSize(n), (n: number) => socket.setSendBufferSize(n)]) {
    try {
      set(SOCKET_BUFFER);
    } catch {
      // not supported by this transport: keep the default
    }
  }
}
