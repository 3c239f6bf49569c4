/**
 * The DHCP server for network boot. Full mode hands out addresses from a
 * pool (RFC 2131: DISCOVER/OFFER/REQUEST/ACK/NAK, DECLINE, RELEASE, INFORM,
 * relays via giaddr) and adds boot information for PXE and iPXE clients.
 * Proxy mode (PXE 2.1 section 2.2.2, "proxyDHCP") never hands out an
 * address: it answers only PXE clients, with boot information, beside the
 * lab's own DHCP server, and serves the port-4011 boot-server exchange that
 * UEFI firmware uses. Sockets are bound to one interface (SO_BINDTODEVICE),
 * so nothing is ever answered on another.
 *
 * Serve loop: receive, decode, validate, decide, reply. A bad packet is
 * counted and dropped; it never throws out of a handler.
 */
import type { Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import {
  clientArch,
  clientMac,
  decodeDhcp,
  DHCP,
  encodeDhcp,
  ipBytes,
  isPxeClient,
  MessageType,
  messageType,
  OPT,
  optionIp,
  pxeVendorOptions,
  u32,
  userClasses,
  type DhcpPacket,
} from '../protocol/dhcp.js';
import { bindUdp } from './socket.js';
import { Leases } from './leases.js';
import { DhcpGuard, type DhcpLimits } from './dhcp-limits.js';

/** What the boot policy is asked. */
export interface BootRequest {
  mac: string;
  /** Option 93 (0 BIOS, 7/9 x64 UEFI, 11 arm64), null if absent. */
  arch: number | null;
  /** The client is iPXE already (user class "iPXE"). */
  ipxe: boolean;
  /** The DHCP transaction: the same for a client's DISCOVER and REQUEST, new after a chainload. */
  xid: number;
}

/** What a booting client is told: a file on TFTP (a name) or a URL (for iPXE). */
export interface BootAnswer {
  file: string;
}

/** Options of DhcpServer. */
export interface DhcpServerOptions {
  mode: 'proxy' | 'full';
  /** Interface to answer on (SO_BINDTODEVICE); required outside tests. */
  device?: string;
  /** This server's address on that interface: server identifier and next-server. */
  serverAddress: string;
  netmask: string;
  /** Full mode: the pool. */
  pool?: { start: string; end: string };
  router?: string;
  dns?: string[];
  leaseSeconds?: number;
  statics?: Map<string, string>;
  leasesPath?: string;
  /** Boot information for a client, or null to give none (unknown machine, ignored). */
  boot: (r: BootRequest) => BootAnswer | null;
  /** Ports (tests use others). */
  port?: number;
  pxePort?: number;
  clientPort?: number;
  /** Where broadcasts go (tests: the lab's broadcast address). */
  broadcast?: string;
  /** The port relay agents listen on (67; tests use another). */
  relayPort?: number;
  /** Address to bind without a device (tests on loopback; default 0.0.0.0). */
  bindAddress?: string;
  /** Whether to answer this machine at all; false: every packet of it is dropped (no address, no boot). Default: all. */
  admit?: (mac: string) => boolean;
  /** Machines the server knows (its registry): exempt from the new-machine limit, and may take the reserved addresses. */
  isKnown?: (mac: string) => boolean;
  /** Limits (DHCP_LIMITS when undefined). */
  limits?: Partial<DhcpLimits>;
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
}

/** Counters for /metrics and tests. */
export interface DhcpCounters {
  received: number;
  malformed: number;
  ignored: number;
  offers: number;
  acks: number;
  naks: number;
  proxyOffers: number;
  bootAcks: number;
  poolFull: number;
  declines: number;
  releases: number;
  /** ACKs not sent because the lease could not be saved (the client asks again). */
  unsaved: number;
  /** Replies the kernel refused to send (e.g. no route to a relay). */
  sendErrors: number;
  /** Packets of machines not admitted (--pxe-unknown ignore, --pxe-known-only, an ignored machine). */
  notAdmitted: number;
  /** DISCOVERs and REQUESTs over their MAC's rate. */
  rateLimited: number;
  /** New machines not given an address: over the new-machine rate, or only reserved addresses left. */
  newLimited: number;
  /** DECLINEs and RELEASEs from a client that does not hold the address. */
  notHolder: number;
}

/** Option 61 as hex, the client's identity besides chaddr. */
function clientId(p: DhcpPacket): string | undefined {
  return p.options.get(OPT.CLIENT_ID)?.toString('hex');
}

/**
 * A DHCP or proxyDHCP server. Emits 'lease' and 'boot' events, and 'closed'
 * once (with the error, if a socket failure ended it).
 */
export class DhcpServer extends EventEmitter {
  readonly counters: DhcpCounters = { received: 0, malformed: 0, ignored: 0, offers: 0, acks: 0, naks: 0, proxyOffers: 0, bootAcks: 0, poolFull: 0, declines: 0, releases: 0, unsaved: 0, sendErrors: 0, notAdmitted: 0, rateLimited: 0, newLimited: 0, notHolder: 0 };
  readonly leases: Leases | undefined;
  private readonly guard: DhcpGuard;
  private main: Socket | undefined;
  private pxe: Socket | undefined;
  private closed = false;

  constructor(private readonly o: DhcpServerOptions) {
    super();
    this.guard = new DhcpGuard(o.limits);
    if (o.mode === 'full') {
      if (o.pool === undefined) throw new RangeError('full mode needs a pool');
      this.leases = new Leases(o.leasesPath, o.pool, o.statics, new Set([o.serverAddress, ...(o.router ? [o.router] : [])]));
    }
  }

  /** Binds port 67 (and 4011 in proxy mode) on the interface. */
  async start(): Promise<void> {
    this.main = await this.bind(this.o.port ?? DHCP.SERVER_PORT);
    this.main.on('message', (msg, rinfo) => this.onMessage(msg, rinfo, false));
    if (this.o.mode === 'proxy') {
      this.pxe = await this.bind(this.o.pxePort ?? DHCP.PXE_PORT);
      this.pxe.on('message', (msg, rinfo) => this.onMessage(msg, rinfo, true));
    }
  }

  /**
   * The one way the service ends: closes both sockets, writes pending
   * leases (bounded), and emits 'closed' once with the error that ended it.
   */
  async close(err?: Error): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [this.main, this.pxe]) {
      try {
        s?.close();
      } catch {
        // already closed
      }
    }
    if (err !== undefined) this.o.log?.('warn', `dhcp: stopped: ${err.message}`);
    await this.leases?.close();
    this.emit('closed', err);
  }

  /** The ports bound (port 0 in options picks free ones). */
  ports(): { dhcp: number; pxe: number | undefined } {
    return { dhcp: this.main!.address().port, pxe: this.pxe?.address().port };
  }

  private async bind(port: number): Promise<Socket> {
    // 0.0.0.0 to receive broadcasts; the device binding keeps other interfaces out.
    const s = await bindUdp({ device: this.o.device, address: this.o.device !== undefined ? '0.0.0.0' : this.o.bindAddress, port });
    // A socket error ends the service (there is no serving without the socket).
    s.on('error', (err: Error) => void this.close(err).catch(() => undefined));
    s.setBroadcast(true);
    return s;
  }

  // ---- receive, decode, validate, decide ----

  private onMessage(msg: Buffer, rinfo: { address: string; port: number }, bootService: boolean): void {
    if (this.closed) return;
    this.counters.received++;
    let p: DhcpPacket;
    try {
      p = decodeDhcp(msg);
    } catch (err) {
      this.counters.malformed++;
      this.o.log?.('debug', `dhcp: from ${rinfo.address}: ${(err as Error).message}`);
      return;
    }
    const mac = clientMac(p);
    const type = messageType(p);
    if (p.op !== DHCP.BOOTREQUEST || mac === null || type === null) {
      this.counters.ignored++;
      return;
    }
    if (this.o.admit !== undefined && !this.o.admit(mac)) {
      // Not ours to serve (--pxe-known-only, --pxe-unknown ignore): no address, no boot, no NAK.
      this.counters.notAdmitted++;
      return;
    }
    if ((type === MessageType.DISCOVER || type === MessageType.REQUEST) && !this.guard.perMac.take(mac)) {
      this.counters.rateLimited++;
      this.o.log?.('debug', `dhcp: ${mac} is over its rate; not answered`);
      return;
    }
    try {
      if (bootService) this.onBootService(p, mac, type, rinfo);
      else if (this.o.mode === 'proxy') this.onProxy(p, mac, type);
      else this.onFull(p, mac, type);
    } catch (err) {
      // A reply that cannot be built (e.g. a boot URL too long for the file field) is this client's problem only.
      this.counters.ignored++;
      this.o.log?.('warn', `dhcp: ${mac}: ${(err as Error).message}`);
    }
  }

  private bootFor(p: DhcpPacket, mac: string): BootAnswer | null {
    const ipxe = userClasses(p).includes('iPXE');
    if (!ipxe && !isPxeClient(p)) return null;
    return this.o.boot({ mac, arch: clientArch(p), ipxe, xid: p.xid });
  }

  /** Proxy mode: only PXE clients, only boot information, never an address. */
  private onProxy(p: DhcpPacket, mac: string, type: MessageType): void {
    if (type !== MessageType.DISCOVER && type !== MessageType.REQUEST) return void this.counters.ignored++;
    // A REQUEST is for the lab's DHCP server, unless it names us (some ROMs ask the proxy again).
    if (type === MessageType.REQUEST && optionIp(p, OPT.SERVER_ID) !== this.o.serverAddress) return void this.counters.ignored++;
    const boot = this.bootFor(p, mac);
    if (boot === null) return void this.counters.ignored++;
    const reply = this.reply(p, type === MessageType.DISCOVER ? MessageType.OFFER : MessageType.ACK, '0.0.0.0', boot, []);
    this.counters.proxyOffers++;
    this.o.log?.('info', `proxyDHCP: ${mac} (arch ${clientArch(p) ?? '-'}) boots ${boot.file}`);
    this.emit('boot', { mac, file: boot.file, mode: 'proxy' });
    this.send(reply, p);
  }

  /** Port 4011 (PXE 2.1 section 2.2.1): the client has an address and asks the boot server directly. */
  private onBootService(p: DhcpPacket, mac: string, type: MessageType, rinfo: { address: string; port: number }): void {
    if (type !== MessageType.REQUEST && type !== MessageType.INFORM) return void this.counters.ignored++;
    const boot = this.bootFor(p, mac);
    if (boot === null) return void this.counters.ignored++;
    const reply = this.reply(p, MessageType.ACK, '0.0.0.0', boot, []);
    this.counters.bootAcks++;
    this.o.log?.('info', `boot service: ${mac} boots ${boot.file}`);
    this.emit('boot', { mac, file: boot.file, mode: 'boot-service' });
    this.pxe!.send(encodeDhcp(reply), rinfo.port, rinfo.address, this.sent);
  }

  /** Full mode: RFC 2131 section 4.3. */
  private onFull(p: DhcpPacket, mac: string, type: MessageType): void {
    const leases = this.leases!;
    const seconds = this.o.leaseSeconds ?? 3600;
    const ours = optionIp(p, OPT.SERVER_ID);
    const requested = optionIp(p, OPT.REQUESTED_IP);
    const hostname = p.options.get(OPT.HOSTNAME)?.toString('latin1') ?? '';
    switch (type) {
      case MessageType.DISCOVER: {
        const ip = leases.choose(mac, requested);
        if (ip === null) {
          this.counters.poolFull++;
          this.o.log?.('warn', `dhcp: no free address for ${mac}: the pool ${this.o.pool!.start}-${this.o.pool!.end} is full`);
          return;
        }
        if (leases.offered(mac) !== ip && !this.mayTakeNew(mac, ip)) return;
        leases.offer(mac, ip, this.guard.limits.offerHoldMs);
        this.counters.offers++;
        const boot = this.bootFor(p, mac);
        if (boot !== null) this.emit('boot', { mac, file: boot.file, mode: 'full' });
        return this.send(this.reply(p, MessageType.OFFER, ip, boot, this.config(seconds)), p);
      }
      case MessageType.REQUEST: {
        if (ours !== null && ours !== this.o.serverAddress) {
          // The client chose another server (RFC 2131 4.3.2): forget the offer, say nothing.
          leases.withdraw(mac);
          return void this.counters.ignored++;
        }
        // RFC 2131 4.3.2: SELECTING (our server id), INIT-REBOOT (requested address, no
        // server id) or RENEWING/REBINDING (ciaddr only).
        const want = requested ?? (p.ciaddr !== '0.0.0.0' ? p.ciaddr : null);
        if (want === null) return void this.counters.ignored++;
        const lease = leases.get(mac);
        let verdict: 'ack' | 'nak' | 'silent';
        if (ours !== null) verdict = leases.offered(mac) === want || lease?.ip === want || leases.available(mac, want) ? 'ack' : 'nak';
        else if (!this.inSubnet(want)) verdict = 'nak'; // the client moved to another network
        else if (lease === undefined) verdict = 'silent'; // no record of this client: not ours to answer
        else verdict = lease.ip === want && leases.available(mac, want) ? 'ack' : 'nak';
        if (verdict === 'silent') return void this.counters.ignored++;
        // An address neither offered to nor leased by this client: a new machine, under the same limits as a DISCOVER.
        if (verdict === 'ack' && leases.offered(mac) !== want && lease?.ip !== want && !this.mayTakeNew(mac, want)) return;
        if (verdict === 'nak') {
          this.counters.naks++;
          this.o.log?.('info', `dhcp: NAK ${mac} asking for ${want}`);
          return this.send(this.nak(p), p);
        }
        const renewal = lease?.ip === want;
        leases.bind(mac, want, seconds, hostname, Date.now(), clientId(p));
        const ack = this.reply(p, MessageType.ACK, want, this.bootFor(p, mac), this.config(seconds));
        // The lease is on disk before the client hears of it; the ACKs of one burst share one fsync.
        leases.commit().then(
          () => {
            if (this.closed) return;
            this.counters.acks++;
            this.emit('lease', { mac, ip: want, hostname });
            // A renewal is routine: logged at debug, so a busy network does not flood the log.
            this.o.log?.(renewal ? 'debug' : 'info', `dhcp: ${mac}${hostname ? ` (${hostname})` : ''} has ${want} for ${seconds} s`);
            this.send(ack, p);
          },
          (err: Error) => {
            // Not ACKed: the client asks again, and the lease is retried in the background.
            this.counters.unsaved++;
            this.o.log?.('debug', `dhcp: no ACK for ${mac}: ${err.message}`);
          },
        ).catch((err: Error) => this.o.log?.('warn', `dhcp: ${mac}: ${err.message}`));
        return;
      }
      case MessageType.DECLINE:
        if (ours !== this.o.serverAddress || requested === null) return void this.counters.ignored++;
        // RFC 2131 4.3.3: the client that was given the address declines it; anyone else's word changes nothing.
        if (!leases.holds(mac, requested, clientId(p))) {
          this.counters.notHolder++;
          this.o.log?.('debug', `dhcp: DECLINE of ${requested} from ${mac}, which does not hold it; ignored`);
          return;
        }
        this.counters.declines++;
        leases.decline(mac, requested, this.guard.limits.declineHoldMs);
        this.o.log?.('warn', `dhcp: ${mac} found ${requested} already in use; kept out of the pool for ${Math.round(this.guard.limits.declineHoldMs / 60_000)} min`);
        return;
      case MessageType.RELEASE:
        if (ours !== this.o.serverAddress) return void this.counters.ignored++;
        if (leases.release(mac, p.ciaddr, clientId(p))) this.counters.releases++;
        else this.counters.notHolder++;
        return;
      case MessageType.INFORM: {
        // The client has an address already: configuration only, no lease, no yiaddr (4.3.5).
        this.counters.acks++;
        const reply = this.reply(p, MessageType.ACK, '0.0.0.0', this.bootFor(p, mac), this.config(null));
        reply.ciaddr = p.ciaddr;
        return this.send(reply, p);
      }
      default:
        this.counters.ignored++;
    }
  }

  /** May mac be given an address it holds no claim to (DhcpGuard.mayTakeNew)? Counted when not. */
  private mayTakeNew(mac: string, ip: string): boolean {
    const why = this.guard.mayTakeNew(this.leases!, mac, ip, this.o.isKnown?.(mac) ?? false);
    if (why === null) return true;
    this.counters.newLimited++;
    this.o.log?.('debug', `dhcp: ${mac} is new and ${why}; not answered`);
    return false;
  }

  private inSubnet(ip: string): boolean {
    const mask = ipBytes(this.o.netmask).readUInt32BE(0);
    return (ipBytes(ip).readUInt32BE(0) & mask) === (ipBytes(this.o.serverAddress).readUInt32BE(0) & mask);
  }

  /** Network configuration options of an OFFER/ACK (lease time only when leasing). */
  private config(seconds: number | null): [number, Buffer][] {
    const out: [number, Buffer][] = [];
    if (seconds !== null) {
      out.push([OPT.LEASE_TIME, u32(seconds)], [OPT.RENEWAL_TIME, u32(Math.floor(seconds / 2))], [OPT.REBINDING_TIME, u32(Math.floor((seconds * 7) / 8))]);
    }
    out.push([OPT.SUBNET_MASK, ipBytes(this.o.netmask)]);
    if (this.o.router !== undefined) out.push([OPT.ROUTER, ipBytes(this.o.router)]);
    if (this.o.dns !== undefined && this.o.dns.length > 0) out.push([OPT.DNS, Buffer.concat(this.o.dns.map(ipBytes))]);
    return out;
  }

  private reply(p: DhcpPacket, type: MessageType, yiaddr: string, boot: BootAnswer | null, extra: [number, Buffer][]): DhcpPacket {
    const options = new Map<number, Buffer>([
      [OPT.MESSAGE_TYPE, Buffer.from([type])],
      [OPT.SERVER_ID, ipBytes(this.o.serverAddress)],
    ]);
    for (const [code, v] of extra) options.set(code, v);
    if (boot !== null) {
      // PXE 2.1: a PXE offer says "PXEClient"; sub-option 6 = 8: no boot-server discovery, load the file named here.
      options.set(OPT.VENDOR_CLASS, Buffer.from('PXEClient'));
      if (isPxeClient(p) && !userClasses(p).includes('iPXE')) options.set(OPT.VENDOR_SPECIFIC, pxeVendorOptions({ 6: Buffer.from([8]) }));
      options.set(OPT.TFTP_SERVER, Buffer.from(this.o.serverAddress));
      options.set(OPT.BOOTFILE, Buffer.from(boot.file));
    }
    const uuid = p.options.get(OPT.CLIENT_UUID);
    if (uuid !== undefined && boot !== null) options.set(OPT.CLIENT_UUID, uuid);
    return {
      op: DHCP.BOOTREPLY,
      htype: p.htype,
      hlen: p.hlen,
      hops: 0,
      xid: p.xid,
      secs: 0,
      flags: p.flags,
      ciaddr: '0.0.0.0',
      yiaddr,
      siaddr: boot !== null ? this.o.serverAddress : '0.0.0.0',
      giaddr: p.giaddr,
      chaddr: p.chaddr,
      sname: boot !== null ? this.o.serverAddress : '',
      // The file field holds up to 127 bytes; longer names travel in option 67 only.
      file: boot !== null && boot.file.length <= 127 ? boot.file : '',
      options,
    };
  }

  private nak(p: DhcpPacket): DhcpPacket {
    const r = this.reply(p, MessageType.NAK, '0.0.0.0', null, []);
    r.flags |= DHCP.BROADCAST;
    return r;
  }

  /** RFC 2131 section 4.1: to the relay, to the client's address, or broadcast. */
  private send(reply: DhcpPacket, req: DhcpPacket): void {
    if (this.closed) return;
    const buf = encodeDhcp(reply);
    const clientPort = this.o.clientPort ?? DHCP.CLIENT_PORT;
    if (req.giaddr !== '0.0.0.0') return void this.main!.send(buf, this.o.relayPort ?? DHCP.SERVER_PORT, req.giaddr, this.sent);
    const type = reply.options.get(OPT.MESSAGE_TYPE)![0];
    if (req.ciaddr !== '0.0.0.0' && type !== MessageType.NAK) return void this.main!.send(buf, clientPort, req.ciaddr, this.sent);
    this.main!.send(buf, clientPort, this.o.broadcast ?? '255.255.255.255', this.sent);
  }

  /** A reply that could not be sent concerns one client: counted, never the socket's 'error' (which ends the service). */
  private readonly sent = (err: Error | null): void => {
    if (err === null) return;
    this.counters.sendErrors++;
    this.o.log?.('debug', `dhcp: send: ${err.message}`);
  };
}
