/**
 * A UDP socket whose descriptor the addon owns (native/src/udp_batch.c), for
 * the multicast engine's hot path: sendBatch() puts a tick's packets on the
 * wire in one sendmmsg (runs of equal packets as UDP GSO), and onBatch()
 * delivers what recvmmsg read in one call, MACs checked in the same pass.
 * Without onBatch() it emits 'message' events like node:dgram, so code that
 * does not batch works unchanged.
 */
import { EventEmitter } from 'node:events';
import { getSystemErrorName } from 'node:util';
import type { NativeAddon, UdpBatchHandle } from '../native/addon.js';
import { BatchStatus, type DatagramBatch, type RemoteInfo, type UdpSocket } from '../protocol/transport.js';

/** Bytes per receive slot: the largest datagram the engine sends (jumbo frames: 9000 - 28), rounded up. */
export const BATCH_SLOT = 9216;
/** Datagrams per receive batch (one recvmmsg). */
export const BATCH_SLOTS = 64;

const Opt = { RCVBUF: 0, SNDBUF: 1, TTL: 2, LOOP: 3 } as const;
const AGAIN = new Set(['EAGAIN', 'EWOULDBLOCK', 'ENOBUFS']);

/** Dotted IPv4 to a 32-bit number; NaN if it is not one. */
export function ipv4ToNumber(address: string): number {
  const p = address.split('.');
  if (p.length !== 4) return NaN;
  let n = 0;
  for (const x of p) {
    const v = Number(x);
    if (!/^\d{1,3}$/.test(x) || v > 255) return NaN;
    n = n * 256 + v;
  }
  return n;
}

/** A 32-bit number to dotted IPv4. */
export function numberToIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

function errnoError(code: number, syscall: string): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`${syscall} failed: errno ${code}`);
  err.errno = -code;
  err.syscall = syscall;
  err.code = getSystemErrorName(-code);
  err.message = `${err.code}: ${syscall} failed`;
  return err;
}

/** Batched UDP/IPv4 socket with the subset of dgram.Socket the engine uses. */
export class BatchSocket extends EventEmitter implements UdpSocket {
  /** Datagrams dropped here: longer than a slot (never cut short and passed on). */
  truncated = 0;
  private readonly h: UdpBatchHandle;
  private port = 0;
  private bound = '0.0.0.0';
  private closed = false;
  private batchListener: ((batch: DatagramBatch) => void) | undefined;
  private readonly batch: { count: number; data: Buffer; slotSize: number; meta: Uint32Array };
  private signKey: Uint8Array | null = null;
  private signState: Buffer | null = null;

  constructor(private readonly addon: NativeAddon) {
    super();
    this.h = addon.udpbOpen();
    this.batch = { count: 0, data: Buffer.alloc(BATCH_SLOT * BATCH_SLOTS), slotSize: BATCH_SLOT, meta: new Uint32Array(4 * BATCH_SLOTS) };
  }

  bind(port: number, address: string | undefined, callback: () => void): void {
    try {
      this.port = this.addon.udpbBind(this.h, address ?? '', port);
      this.bound = address ?? '0.0.0.0';
    } catch (err) {
      process.nextTick(() => this.emit('error', err));
      return;
    }
    // Receiving starts at bind, as with dgram.
    process.nextTick(() => {
      if (this.closed) return;
      callback();
      if (!this.closed) this.startReceiving();
    });
  }

  private startReceiving(): void {
    this.addon.udpbRecvStart(this.h, (count) => this.deliver(count), this.batch.data, BATCH_SLOT, this.batch.meta);
  }

  private deliver(count: number): void {
    if (this.closed) return;
    this.batch.count = count;
    if (this.batchListener !== undefined) {
      this.batchListener(this.batch);
      return;
    }
    const { data, meta } = this.batch;
    for (let i = 0; i < count && !this.closed; i++) {
      if (meta[4 * i + 3] === BatchStatus.TRUNCATED) {
        this.truncated++;
        continue;
      }
      const length = meta[4 * i];
      // A listener may keep the datagram: its own copy.
      const msg = Buffer.from(data.subarray(i * BATCH_SLOT, i * BATCH_SLOT + length));
      this.emit('message', msg, { address: numberToIpv4(meta[4 * i + 1]), port: meta[4 * i + 2], size: length } satisfies RemoteInfo);
    }
  }

  /** Datagrams go to listener in batches from the next one on, MACs of verify.types checked under verify.key. */
  onBatch(listener: (batch: DatagramBatch) => void, verify?: { key: Uint8Array; types: number[] }): void {
    this.batchListener = listener;
    const state = verify !== undefined ? this.addon.macKey(Buffer.from(verify.key)) : null;
    const types = verify !== undefined ? verify.types.reduce((m, t) => m | (1 << t), 0) >>> 0 : 0;
    this.addon.udpbSetVerify(this.h, state, types);
  }

  send(msg: Buffer, port: number, address: string, callback?: (err: Error | null) => void): void {
    if (this.closed) {
      const err: NodeJS.ErrnoException = new Error('Not running');
      err.code = 'ERR_SOCKET_DGRAM_NOT_RUNNING';
      throw err;
    }
    const code = this.addon.udpbSend(this.h, msg, 0, msg.length, port, address);
    const err = code === 0 ? null : errnoError(code, 'send');
    if (callback !== undefined) process.nextTick(callback, err);
    // A full queue loses the datagram as the network could (the protocol repeats what matters); other failures are errors, as with dgram.
    else if (err !== null && !AGAIN.has(err.code!)) process.nextTick(() => this.emit('error', err));
  }

  sendBatch(packets: Buffer, meta: Uint32Array, count: number, signKey: Uint8Array | null): number {
    if (this.closed) return 0;
    if (signKey !== this.signKey) {
      this.signKey = signKey;
      this.signState = signKey === null ? null : this.addon.macKey(Buffer.from(signKey));
    }
    return this.addon.udpbSendBatch(this.h, packets, meta, count, this.signState);
  }

  /** True while runs of packets go as UDP GSO sends. */
  get gso(): boolean {
    return !this.closed && this.addon.udpbGso(this.h);
  }

  addMembership(group: string, iface?: string): void {
    this.addon.udpbMembership(this.h, group, iface ?? '');
  }

  setMulticastInterface(iface: string): void {
    this.addon.udpbMulticastInterface(this.h, iface);
  }

  setMulticastTTL(ttl: number): void {
    this.addon.udpbSetInt(this.h, Opt.TTL, ttl);
  }

  setMulticastLoopback(on: boolean): void {
    this.addon.udpbSetInt(this.h, Opt.LOOP, on ? 1 : 0);
  }

  setRecvBufferSize(size: number): void {
    this.addon.udpbSetInt(this.h, Opt.RCVBUF, size);
  }

  setSendBufferSize(size: number): void {
    this.addon.udpbSetInt(this.h, Opt.SNDBUF, size);
  }

  address(): { address: string; port: number } {
    return { address: this.bound, port: this.port };
  }

  close(callback?: () => void): void {
    if (this.closed) {
      const err: NodeJS.ErrnoException = new Error('Not running');
      err.code = 'ERR_SOCKET_DGRAM_NOT_RUNNING';
      throw err;
    }
    this.closed = true;
    this.addon.udpbClose(this.h);
    process.nextTick(() => {
      this.emit('close');
      callback?.();
    });
  }
}

/**
 * Calls fn for every datagram of a batch: a view into the shared buffer (valid during
 * the call only), where it came from (one object, reused), and whether its MAC was
 * found good already. A truncated datagram (longer than any packet) goes to dropped instead.
 */
export function eachDatagram(batch: DatagramBatch, fn: (msg: Buffer, rinfo: RemoteInfo, macChecked: boolean) => void, dropped: () => void): void {
  const { data, meta, slotSize } = batch;
  for (let i = 0; i < batch.count; i++) {
    const status = meta[4 * i + 3];
    if (status === BatchStatus.TRUNCATED) {
      dropped();
      continue;
    }
    const length = meta[4 * i];
    const from = meta[4 * i + 1];
    if (from !== lastFrom) {
      lastFrom = from;
      lastAddress = numberToIpv4(from);
    }
    rinfo.address = lastAddress;
    rinfo.port = meta[4 * i + 2];
    rinfo.size = length;
    fn(data.subarray(i * slotSize, i * slotSize + length), rinfo, status === BatchStatus.MAC_OK);
  }
}
const rinfo: RemoteInfo = { address: '', port: 0, size: 0 };
let lastFrom = -1;
let lastAddress = '';

/**
 * Listens on socket: in batches (MACs of verify.types checked in the batch) when it
 * can, else one 'message' event at a time (macChecked false). Datagrams too long for
 * any packet are counted by dropped. Call before bind().
 */
export function listen(
  socket: UdpSocket,
  fn: (msg: Buffer, rinfo: RemoteInfo, macChecked: boolean) => void,
  verify: { key: Uint8Array; types: number[] } | undefined,
  dropped: () => void,
): void {
  if (socket.onBatch !== undefined) socket.onBatch((batch) => eachDatagram(batch, fn, dropped), verify);
  else socket.on('message', (msg, rinfo) => fn(msg, rinfo, false));
}
