/**
 * UDP sockets of the boot services: bound to one interface with
 * SO_BINDTODEVICE (native addon, set before bind, so no packet from another
 * interface is ever queued), or plainly bound when no interface is given
 * (tests on loopback).
 */
import { createSocket, type Socket } from 'node:dgram';
import { native } from '../native/addon.js';

/** A bound UDP/IPv4 socket; rejects with the bind error (EADDRINUSE, EPERM...). */
export function bindUdp(o: { device?: string; address?: string; port: number }): Promise<Socket> {
  const s = createSocket({ type: 'udp4', reuseAddr: true });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    const done = () => {
      s.off('error', reject);
      resolve(s);
    };
    const address = o.address ?? '0.0.0.0';
    if (o.device !== undefined) s.bind({ fd: native().udpSocket(o.device, address, o.port) } as never, done);
    else s.bind(o.port, address, done);
  });
}
