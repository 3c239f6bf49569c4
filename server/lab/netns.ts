/**
 * The network-namespace lab: a bridge in a namespace of its own, a server
 * namespace and N client namespaces, each linked to the bridge by a veth
 * pair. Addresses 10.77.0.1 (server) and 10.77.0.10+k (clients). Optional
 * per-client loss (a classic-BPF filter on the bridge port towards the
 * client: kernels without netem can still run it) and a rate limit (tbf)
 * on the server's link. down() removes everything by name. Used by the lab
 * tests and benchmarks; `clonecast lab` will expose it.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** How to build a lab. */
export interface LabOptions {
  clients: number;
  /** Loss towards each client, 0-1: one number for all, or one per client. */
  loss?: number | number[];
  /** Rate limit of the server's link, Mbit/s. */
  rateMbit?: number;
  /**
   * One-way delay, ms, on the server's link (both directions), by a
   * layer-2 relay in a namespace between the server and the bridge
   * (delay-relay.py; this kernel has no netem).
   */
  delayMs?: number;
}

/** One host of the lab. */
export interface LabHost {
  ns: string;
  address: string;
  iface: string;
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

// A classic-BPF program for tc's cls_bpf in direct-action mode:
//   ld  [SKF_AD_OFF + SKF_AD_RANDOM]   ; a random u32
//   jge #threshold, +1                  ; at or above: keep
//   ret #TC_ACT_SHOT (2)
//   ret #TC_ACT_OK (0)
function lossBytecode(loss: number): string {
  const SKF_AD_RANDOM = 4294963256; // (u32)(SKF_AD_OFF -4096 + SKF_AD_RANDOM 56)
  const threshold = Math.min(0xffffffff, Math.round(loss * 2 ** 32));
  return `4,32 0 0 ${SKF_AD_RANDOM},53 1 0 ${threshold},6 0 0 2,6 0 0 0`;
}

/** A running lab. */
export class Lab {
  readonly server: LabHost;
  readonly clients: LabHost[] = [];
  private readonly namespaces: string[] = [];
  private readonly bridgeNs: string;
  private children: ChildProcess[] = [];

  private constructor(readonly tag: string) {
    this.bridgeNs = `cc${tag}b`;
    this.server = { ns: `cc${tag}s`, address: '10.77.0.1', iface: 'eth0' };
  }

  /** Builds a lab; on any failure removes what it made and throws. */
  static up(options: LabOptions & { tag?: string }): Lab {
    const lab = new Lab(options.tag ?? randomBytes(3).toString('hex'));
    try {
      lab.build(options);
    } catch (err) {
      lab.down();
      throw err;
    }
    return lab;
  }

  private build(options: LabOptions): void {
    const b = this.bridgeNs;
    this.addNs(b);
    run('ip', ['-n', b, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0']);
    run('ip', ['-n', b, 'link', 'set', 'br0', 'up']);
    // br_netfilter would push every bridged packet through iptables (LAB-NOTES).
    spawnSync('ip', ['netns', 'exec', b, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0']);
    if (options.delayMs !== undefined && options.delayMs > 0) this.attachDelayed(this.server, 'vs', options.delayMs);
    else this.attach(this.server, 'vs');
    if (options.rateMbit !== undefined) {
      run('ip', ['netns', 'exec', this.server.ns, 'tc', 'qdisc', 'add', 'dev', 'eth0', 'root', 'tbf', 'rate', `${options.rateMbit}mbit`, 'burst', '64kb', 'latency', '20ms']);
    }
    for (let k = 0; k < options.clients; k++) {
      const host = { ns: `cc${this.tag}c${k}`, address: `10.77.0.${10 + k}`, iface: 'eth0' };
      this.attach(host, `vc${k}`);
      this.clients.push(host);
      const loss = Array.isArray(options.loss) ? options.loss[k] : options.loss;
      if (loss !== undefined && loss > 0) this.setLoss(k, loss);
    }
  }

  private addNs(ns: string): void {
    run('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  }

  private attach(host: LabHost, port: string): void {
    this.addNs(host.ns);
    run('ip', ['-n', this.bridgeNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.ns]);
    run('ip', ['-n', this.bridgeNs, 'link', 'set', port, 'master', 'br0', 'up']);
    run('ip', ['-n', host.ns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0']);
    run('ip', ['-n', host.ns, 'link', 'set', 'eth0', 'up']);
    // Namespaces have no default route: multicast needs one for 239/8.
    run('ip', ['-n', host.ns, 'route', 'add', '239.0.0.0/8', 'dev', 'eth0']);
  }

  // host <-> relay namespace (delay-relay.py forwarding frames late) <-> bridge.
  private attachDelayed(host: LabHost, port: string, delayMs: number): void {
    const relay = `cc${this.tag}r`;
    this.addNs(relay);
    this.addNs(host.ns);
    run('ip', ['-n', this.bridgeNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'up0', 'netns', relay]);
    run('ip', ['-n', this.bridgeNs, 'link', 'set', port, 'master', 'br0', 'up']);
    run('ip', ['-n', relay, 'link', 'add', 'down0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.ns]);
    for (const dev of ['up0', 'down0']) run('ip', ['-n', relay, 'link', 'set', dev, 'promisc', 'on', 'up']);
    // Frames a packet socket picks up from a veth may carry checksums left to
    // offload; sent on as they are they would be dropped. Compute them in software.
    run('ip', ['netns', 'exec', host.ns, 'ethtool', '-K', 'eth0', 'tx', 'off']);
    run('ip', ['netns', 'exec', this.bridgeNs, 'ethtool', '-K', port, 'tx', 'off']);
    run('ip', ['-n', host.ns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0']);
    run('ip', ['-n', host.ns, 'link', 'set', 'eth0', 'up']);
    run('ip', ['-n', host.ns, 'route', 'add', '239.0.0.0/8', 'dev', 'eth0']);
    const script = fileURLToPath(new URL('../../../server/lab/delay-relay.py', import.meta.url));
    const source = existsSync(script) ? script : fileURLToPath(new URL('./delay-relay.py', import.meta.url));
    this.spawnIn(relay, '/usr/bin/python3', [source, 'up0', 'down0', String(delayMs)], { stdio: 'ignore' });
  }

  /** Sets independent random loss (0-1) on everything the bridge sends to client k. */
  setLoss(k: number, loss: number): void {
    const dev = `vc${k}`;
    spawnSync('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'qdisc', 'del', 'dev', dev, 'clsact']);
    run('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'qdisc', 'add', 'dev', dev, 'clsact']);
    run('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'filter', 'add', 'dev', dev, 'egress', 'bpf', 'da', 'bytecode', lossBytecode(loss)]);
  }

  /** Drops every multicast packet towards client k: a machine at a site the group does not reach. */
  blockMulticast(k: number): void {
    const dev = `vc${k}`;
    spawnSync('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'qdisc', 'add', 'dev', dev, 'clsact']); // may exist already (loss)
    // cBPF, direct action (no act_gact module here): frames to an IPv4 multicast MAC
    // (01:00:5e:...) are shot (2); anything else goes on to the next filter (-1, the loss filter).
    //   ldh [0]; jeq #0x0100, 0, 3; ldb [2]; jeq #0x5e, 0, 1; ret #2; ret #-1
    const prog = '6,40 0 0 0,21 0 3 256,48 0 0 2,21 0 1 94,6 0 0 2,6 0 0 4294967295';
    run('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'filter', 'add', 'dev', dev, 'egress', 'pref', '1', 'bpf', 'da', 'bytecode', prog]);
  }

  /** Packets the loss filter dropped towards client k (the clsact qdisc's drop counter). */
  droppedTowards(k: number): number {
    const out = run('ip', ['netns', 'exec', this.bridgeNs, 'tc', '-s', 'qdisc', 'show', 'dev', `vc${k}`]);
    const m = /qdisc clsact[^\n]*\n\s*Sent \d+ bytes \d+ pkt \(dropped (\d+)/.exec(out);
    return m ? Number(m[1]) : 0;
  }

  /** The namespace holding the bridge (qemu runs there, on a tap device). */
  get bridgeNamespace(): string {
    return this.bridgeNs;
  }

  /** Adds a tap device on the bridge for a VM (run the VM in bridgeNamespace); removed with the namespace. */
  addTap(name: string): string {
    run('ip', ['-n', this.bridgeNs, 'tuntap', 'add', 'dev', name, 'mode', 'tap']);
    run('ip', ['-n', this.bridgeNs, 'link', 'set', name, 'master', 'br0', 'up']);
    return name;
  }

  /** Adds a host on the bridge without an address (a machine that will ask DHCP for one). */
  addBareHost(k: number): LabHost {
    const host = { ns: `cc${this.tag}x${k}`, address: '', iface: 'eth0' };
    this.addNs(host.ns);
    run('ip', ['-n', this.bridgeNs, 'link', 'add', `vx${k}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.ns]);
    run('ip', ['-n', this.bridgeNs, 'link', 'set', `vx${k}`, 'master', 'br0', 'up']);
    run('ip', ['-n', host.ns, 'link', 'set', 'eth0', 'up']);
    return host;
  }

  /** Spawns a command inside a namespace; killed by down(). */
  spawnIn(ns: string, cmd: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    this.children.push(child);
    return child;
  }

  /**
   * Spawns `sh -c PREFIX` on the host, which then execs the command inside
   * the namespace: for host-side setup such as joining a cgroup (inside the
   * namespace, ip netns exec mounts its own /sys, without the cgroup trees).
   */
  spawnInAfter(prefix: string, ns: string, cmd: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn('sh', ['-c', `${prefix}; exec ip netns exec ${ns} "$0" "$@"`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    this.children.push(child);
    return child;
  }

  /** Runs a command inside a namespace and returns its stdout. */
  execIn(ns: string, cmd: string, args: string[]): string {
    return run('ip', ['netns', 'exec', ns, cmd, ...args]);
  }

  /** Process ids of what it spawned and is still running. */
  childPids(): number[] {
    return this.children.filter((c) => c.exitCode === null && c.pid !== undefined).map((c) => c.pid!);
  }

  /** The namespaces made so far (for a caller that must delete them later by name). */
  get namespaceNames(): string[] {
    return [...this.namespaces];
  }

  /** Kills what it spawned and deletes every namespace it made (their links go with them). */
  down(): void {
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    this.children = [];
    for (const ns of this.namespaces.reverse()) spawnSync('ip', ['netns', 'del', ns]);
    this.namespaces.length = 0;
  }
}

/** True if this machine can build a lab (root, ip netns, tc). */
export function labAvailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root for network namespaces';
  const probe = `ccprobe${process.pid}`;
  const r = spawnSync('ip', ['netns', 'add', probe]);
  if (r.status !== 0) return `cannot create network namespaces: ${r.stderr}`;
  spawnSync('ip', ['netns', 'del', probe]);
  if (spawnSync('tc', ['-V']).status !== 0) return 'needs tc (iproute2)';
  return null;
}
