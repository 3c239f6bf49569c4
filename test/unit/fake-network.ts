/**
 * An in-memory UDP network for engine unit tests: multicast groups and
 * unicast, with deterministic loss, duplication and reordering per receiving
 * socket, driven by a seeded generator.
 */
import { EventEmitter } from 'node:events';
import type { RemoteInfo, UdpSocket } from '../../protocol/transport.js';

/** Faults applied to datagrams delivered to one host. */
export interface Faults {
  loss?: number;
  duplicate?: number;
  /** Probability that a datagram is held back and delivered after the next few. */
  reorder?: number;
}

/** A shared fake network; make sockets with socket(hostAddress). */
export class FakeNetwork {
  private readonly sockets = new Set<FakeSocket>();
  private nextPort = 40000;
  private rng: () => number;
  readonly faults = new Map<string, Faults>();
  delivered = 0;
  droppedByFaults = 0;

  constructor(seed = 1) {
    let s = seed >>> 0 || 1;
    this.rng = () => {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>> 0) / 2 ** 32;
    };
  }

  /** A socket factory for a host with this address. */
  factory(address: string): () => UdpSocket {
    return () => new FakeSocket(this, address) as unknown as UdpSocket;
  }

  /** @internal */
  register(s: FakeSocket): void {
    this.sockets.add(s);
  }

  /** @internal */
  unregister(s: FakeSocket): void {
    this.sockets.delete(s);
  }

  /** @internal */
  allocPort(): number {
    return this.nextPort++;
  }

  /** @internal Delivers msg from (address, port) to every matching socket. */
  route(msg: Buffer, from: { address: string; port: number }, port: number, address: string): void {
    const multicast = Number(address.split('.')[0]) >= 224 && Number(address.split('.')[0]) <= 239;
    for (const s of this.sockets) {
      if (s.port !== port) continue;
      if (multicast ? !s.groups.has(address) : s.host !== address) continue;
      this.deliver(s, Buffer.from(msg), { address: from.address, port: from.port, size: msg.length });
    }
  }

  private deliver(s: FakeSocket, msg: Buffer, rinfo: RemoteInfo): void {
    const f = this.faults.get(s.host) ?? {};
    if (f.loss && this.rng() < f.loss) {
      this.droppedByFaults++;
      return;
    }
    const copies = f.duplicate && this.rng() < f.duplicate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const delay = f.reorder && this.rng() < f.reorder ? 1 + Math.floor(this.rng() * 3) : 0;
      this.delivered++;
      if (delay === 0) queueMicrotask(() => s.emit('message', msg, rinfo));
      else setTimeout(() => s.emit('message', msg, rinfo), delay);
    }
  }
}

class FakeSocket extends EventEmitter {
  port = 0;
  readonly groups = new Set<string>();
  private closed = false;

  constructor(
    private readonly net: FakeNetwork,
    readonly host: string,
  ) {
    super();
  }

  bind(port: number, _address: string | undefined, cb: () => void): void {
    this.port = port || this.net.allocPort();
    this.net.register(this);
    queueMicrotask(cb);
  }

  send(msg: Buffer, port: number, address: string, cb?: (err: Error | null) => void): void {
    // Like node:dgram: sending on a closed socket throws at once.
    if (this.closed) throw Object.assign(new Error('Not running'), { code: 'ERR_SOCKET_DGRAM_NOT_RUNNING' });
    this.net.route(msg, { address: this.host, port: this.port }, port, address);
    if (cb) queueMicrotask(() => cb(null));
  }

  addMembership(group: string): void {
    this.groups.add(group);
  }

  setMulticastInterface(): void {}
  setMulticastTTL(): void {}
  setMulticastLoopback(): void {}
  setRecvBufferSize(): void {}
  setSendBufferSize(): void {}

  address(): { address: string; port: number } {
    return { address: this.host, port: this.port };
  }

  close(cb?: () => void): void {
    this.closed = true;
    this.net.unregister(this);
    cb?.();
  }
}
