/**
 * Wake-on-LAN: magic packets (protocol/wol.ts) for machines the registry
 * knows, sent on the server's machine interface to the limited broadcast
 * address and to any directed broadcasts the operator configured (for a
 * subnet the server reaches through a router that forwards them).
 */
import { bindUdp } from '../pxe/socket.js';
import { encodeMagic, parseMac, WOL } from '../protocol/wol.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Registry } from './registry.js';
import type { SessionManager } from './sessions.js';

/** Where and how magic packets go. */
export interface WakeOptions {
  /** Send only out of this interface (SO_BINDTODEVICE); default: wherever the kernel routes a broadcast. */
  device?: string;
  /** Destinations (default: 255.255.255.255, the limited broadcast). */
  broadcasts?: string[];
  /** UDP port (default WOL.PORT, 9). */
  port?: number;
  /** Copies of each packet (default 3: a switch or a card waking from deep sleep may miss one). */
  repeats?: number;
}

/** The limited broadcast address (RFC 919): this link, never forwarded. */
export const LIMITED_BROADCAST = '255.255.255.255';
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

/** What wake() sent. */
export interface WakeReport {
  macs: string[];
  broadcasts: string[];
  packets: number;
}

/** Checks a list of directed broadcast addresses from the command line; throws USAGE naming the bad one. */
export function checkBroadcasts(list: string[]): string[] {
  for (const a of list) if (!IPV4.test(a)) throw new ClonecastError(ERR.USAGE, `"${a}" is not an IPv4 broadcast address such as 10.77.1.255`);
  return list;
}

/** Sends magic packets for every MAC to every destination. */
export async function wake(macs: string[], o: WakeOptions = {}): Promise<WakeReport> {
  const parsed = macs.map((m) => {
    const b = parseMac(m);
    if (b === null) throw new ClonecastError(ERR.USAGE, `"${m}" is not a MAC address such as 52:54:00:12:34:56`);
    return b;
  });
  const broadcasts = checkBroadcasts(o.broadcasts !== undefined && o.broadcasts.length > 0 ? o.broadcasts : [LIMITED_BROADCAST]);
  const port = o.port ?? WOL.PORT;
  const repeats = o.repeats ?? 3;
  const socket = await bindUdp({ device: o.device, port: 0 });
  let packets = 0;
  try {
    socket.setBroadcast(true);
    for (let r = 0; r < repeats; r++) {
      for (const mac of parsed) {
        const packet = encodeMagic(mac);
        for (const to of broadcasts) {
          await new Promise<void>((resolve, reject) => socket.send(packet, port, to, (err) => (err ? reject(err) : resolve())));
          packets++;
        }
      }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ClonecastError(ERR.UNREACHABLE, `could not send the wake-up packets (${e.code ?? e.message}): check the interface${o.device !== undefined ? ` ${o.device}` : ''} and its broadcast route`);
  } finally {
    socket.close();
  }
  return { macs: parsed.map((b) => b.toString('hex').replace(/(..)(?!$)/g, '$1:')), broadcasts, packets };
}

/**
 * POST /api/wake: {machines: [MAC...]} | {group: NAME} | {session: ID}.
 * A group or session wakes every MAC the registry knows for its machines.
 */
export async function wakeMachines(registry: Registry, sessions: SessionManager, send: ((macs: string[]) => Promise<WakeReport>) | undefined, body: unknown): Promise<WakeReport & { unknown: string[] }> {
  if (send === undefined) throw new ClonecastError(ERR.USAGE, 'this server cannot send wake-up packets (it was started without a network to send them on)');
  const b = (typeof body === 'object' && body !== null ? body : {}) as { machines?: unknown; group?: unknown; session?: unknown };
  const given = [b.machines, b.group, b.session].filter((x) => x !== undefined).length;
  if (given !== 1) throw new ClonecastError(ERR.USAGE, 'send exactly one of {"machines": [MAC, ...]}, {"group": NAME} or {"session": ID}');
  let macs: string[];
  const unknown: string[] = [];
  if (b.machines !== undefined) {
    if (!Array.isArray(b.machines) || b.machines.length === 0 || b.machines.length > 1024 || b.machines.some((m) => typeof m !== 'string')) {
      throw new ClonecastError(ERR.USAGE, '"machines" is a list of 1-1024 MAC addresses');
    }
    macs = b.machines as string[];
    for (const m of macs) if (registry.get(m.toLowerCase().replace(/-/g, ':')) === undefined) unknown.push(m);
  } else if (b.group !== undefined) {
    if (typeof b.group !== 'string') throw new ClonecastError(ERR.USAGE, '"group" is a group name');
    const members = registry.inGroup(b.group);
    if (members.length === 0) throw new ClonecastError(ERR.NOT_FOUND, `no machine is in group "${b.group}" ("clonecast machines set MAC --groups ${b.group}" puts one there)`);
    macs = members.flatMap((m) => (m.macs.length > 0 ? m.macs : [m.id]));
  } else {
    const s = typeof b.session === 'number' ? sessions.get(b.session) : undefined;
    if (s === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no session ${String(b.session)}`);
    const ids = s.rule.machines ?? (s.rule.group !== undefined ? registry.inGroup(s.rule.group).map((m) => m.id) : Object.keys(s.machines));
    if (ids.length === 0) {
      const why = s.rule.group !== undefined ? `its group "${s.rule.group}" has no machines yet ("clonecast machines set MAC --groups ${s.rule.group}")` : 'it takes any machine that comes: there is no list of machines to wake; wake them by MAC or group';
      throw new ClonecastError(ERR.NOT_FOUND, `session ${s.id}: ${why}`);
    }
    macs = ids.flatMap((id) => registry.get(id)?.macs ?? [id]);
  }
  return { ...(await send([...new Set(macs.map((m) => m.toLowerCase().replace(/-/g, ':')))])), unknown };
}
