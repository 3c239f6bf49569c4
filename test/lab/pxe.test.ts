/**
 * `clonecast serve --pxe` in the namespace lab with real clients: ISC
 * dhclient and busybox udhcpc in full and proxy mode, an interface the
 * server must not answer on, and qemu VMs (BIOS with qemu's iPXE ROM, UEFI
 * with OVMF) booting through DHCP or proxyDHCP (beside dnsmasq as the lab's
 * own DHCP server), TFTP (the iPXE binary) and HTTP (script, kernel,
 * initramfs) to a test kernel that prints a marker on the serial console.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { itNeeds, missing, tempDir } from '../helpers.js';
import { Fleet, until, type Proc } from './fleet.js';
import { makeBootFiles, MARKER } from './vm.js';
import type { LabHost } from '../../server/lab/netns.js';

const DHCP_CAPS = ['netns', 'curl', 'udhcpc', 'dhclient', 'qemu'];
const VM_CAPS = ['netns', 'curl', 'qemu', 'kernel', 'radvd', 'dnsmasq'];

/** Boot times of the VM cases, printed at the end for the record. */
const bootTimes: string[] = [];

describe('network boot services with real clients', () => {
  const dir = tempDir('pxe');
  const bootDir = join(dir, 'boot');
  let fleet: Fleet | undefined;
  const hosts: LabHost[] = [];

  beforeAll(() => {
    if (missing(['netns']).length > 0) return;
    writeFileSync(join(dir, 'udhcpc.sh'), '#!/bin/sh\necho "udhcpc-event $1 ip=$ip mask=$subnet lease=$lease"\n[ "$1" = bound ] && ip addr add $ip/24 dev $interface\nexit 0\n');
    chmodSync(join(dir, 'udhcpc.sh'), 0o755);
    // What dhclient-script would do, without touching resolv.conf: log, and configure the address (a release is sent from it).
    writeFileSync(join(dir, 'dhclient.sh'), `#!/bin/sh\necho "dhclient-event $reason $new_ip_address $new_subnet_mask" >> ${dir}/dhclient.log\n[ "$reason" = BOUND ] && ip addr add $new_ip_address/24 dev $interface\nexit 0\n`);
    chmodSync(join(dir, 'dhclient.sh'), 0o755);
  });
  afterAll(() => {
    fleet?.down();
    // dhclient -1 goes to the background once bound; it must not outlive its namespace.
    spawnSync('sh', ['-c', `[ -f ${join(dir, 'dhclient.pid')} ] && kill $(cat ${join(dir, 'dhclient.pid')}) 2>/dev/null`]);
    if (bootTimes.length > 0) console.log(`PXE boot times (power-on to marker):\n  ${bootTimes.join('\n  ')}`);
  });

  const start = async (mode: 'full' | 'proxy', extra: string[] = []) => {
    fleet?.down();
    fleet = new Fleet(dir, join(dir, `data-${mode}`), 0);
    hosts.length = 0;
    for (let k = 0; k < 2; k++) {
      const h = fleet.lab.addBareHost(k);
      fleet.lab.execIn(h.ns, 'ip', ['link', 'set', 'eth0', 'address', `02:77:00:00:00:0${k + 1}`]);
      hosts.push(h);
    }
    await fleet.startServer(['--listen', '10.77.0.1:8080', '--pxe', mode, ...extra]);
    return fleet;
  };
  const restartServer = async (f: Fleet, args: string[]) => {
    f.server!.child.kill('SIGTERM');
    await f.server!.exited;
    await f.startServer(args);
  };
  const udhcpc = (h: LabHost, args: string[] = ['-n', '-q', '-t', '3', '-T', '1']) =>
    spawnSync('ip', ['netns', 'exec', h.ns, 'busybox', 'udhcpc', '-i', 'eth0', '-f', '-s', join(dir, 'udhcpc.sh'), ...args], { encoding: 'utf8', timeout: 30_000 });
  const dhclient = (h: LabHost, args: string[]) =>
    spawnSync('ip', ['netns', 'exec', h.ns, 'timeout', '15', 'dhclient', '-4', '-sf', join(dir, 'dhclient.sh'), '-lf', join(dir, 'dhclient.leases'), '-pf', join(dir, 'dhclient.pid'), ...args, 'eth0'], { encoding: 'utf8' });
  const counter = async (f: Fleet, result: string) => Number(new RegExp(`clonecast_dhcp_packets_total\\{result="${result}"\\} (\\d+)`).exec(await f.api('GET', '/metrics'))?.[1]);
  const leases = (f: Fleet) => JSON.parse(readFileSync(join(f.data, 'pxe', 'leases.json'), 'utf8')) as { mac: string; ip: string }[];

  itNeeds(DHCP_CAPS, 'full mode: udhcpc and dhclient get leases; a renewal and a release work', async () => {
    const f = await start('full', ['--lease-time', '600']);
    const u = udhcpc(hosts[0]);
    expect(u.status, u.stderr).toBe(0);
    expect(u.stdout).toMatch(/udhcpc-event bound ip=10\.77\.0\.100 mask=255\.255\.255\.0 lease=600/);
    const d = dhclient(hosts[1], ['-1']);
    expect(d.status, d.stderr).toBe(0);
    expect(readFileSync(join(dir, 'dhclient.log'), 'utf8')).toMatch(/dhclient-event BOUND 10\.77\.0\.101 255\.255\.255\.0/);
    expect(leases(f).map((l) => [l.mac, l.ip]).sort()).toEqual([['02:77:00:00:00:01', '10.77.0.100'], ['02:77:00:00:00:02', '10.77.0.101']]);
    // udhcpc renews on SIGUSR1 (a unicast REQUEST from its address) and releases on exit (-R).
    const acks = await counter(f, 'acks');
    const renewing = spawnSync(
      'ip',
      ['netns', 'exec', hosts[0].ns, 'sh', '-c', `busybox udhcpc -i eth0 -f -R -s ${join(dir, 'udhcpc.sh')} & p=$!; sleep 2; kill -USR1 $p; sleep 2; kill -TERM $p; wait $p`],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(renewing.stdout).toMatch(/udhcpc-event renew ip=10\.77\.0\.100/);
    expect(await counter(f, 'acks')).toBeGreaterThanOrEqual(acks + 2);
    expect(await counter(f, 'releases')).toBe(1);
    expect(leases(f).map((l) => l.mac)).toEqual(['02:77:00:00:00:02']);
    // dhclient -r releases too.
    expect(dhclient(hosts[1], ['-r']).status).toBe(0);
    expect(await counter(f, 'releases')).toBe(2);
    expect(leases(f)).toEqual([]);
  }, 90_000);

  itNeeds(DHCP_CAPS, 'full mode: leases survive a server restart', async () => {
    const f = await start('full');
    expect(udhcpc(hosts[0]).status).toBe(0);
    expect(udhcpc(hosts[1]).status).toBe(0);
    const before = leases(f);
    await restartServer(f, ['--listen', '10.77.0.1:8080', '--pxe', 'full']);
    // The second machine asks first this time: it still gets its own address.
    for (const h of hosts) fl(h);
    const again = udhcpc(hosts[1]);
    expect(again.stdout).toMatch(/bound ip=10\.77\.0\.101/);
    expect(udhcpc(hosts[0]).stdout).toMatch(/bound ip=10\.77\.0\.100/);
    expect(leases(f).map((l) => l.ip).sort()).toEqual(before.map((l) => l.ip).sort());
    function fl(h: LabHost) {
      f.lab.execIn(h.ns, 'ip', ['addr', 'flush', 'dev', 'eth0']);
    }
  }, 90_000);

  itNeeds(DHCP_CAPS, '--pxe-known-only: udhcpc on an unknown machine gets no address; a machine with a static lease gets its own; scripts only for known MACs', async () => {
    const f = await start('full', ['--pxe-known-only', '--static-lease', '02:77:00:00:00:01=10.77.0.50']);
    const unknown = udhcpc(hosts[1]);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stdout).not.toMatch(/bound/);
    expect(await counter(f, 'notAdmitted')).toBeGreaterThanOrEqual(1);
    expect(await counter(f, 'offers')).toBe(0);
    const known = udhcpc(hosts[0]);
    expect(known.stdout).toMatch(/udhcpc-event bound ip=10\.77\.0\.50/);
    // (The data directory is shared with the tests above: the other machine may have an old lease in the file.)
    expect(leases(f).find((l) => l.mac === '02:77:00:00:00:01')?.ip).toBe('10.77.0.50');
    // Boot scripts come from the plain-HTTP boot listener (the --listen port + 1).
    const status = (mac: string) => f.lab.execIn(hosts[0].ns, 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://10.77.0.1:8081/boot/ipxe?mac=${mac}`]).trim();
    expect(status('02:77:00:00:00:02')).toBe('404');
    expect(status('02:77:00:00:00:01')).toBe('200');
  }, 90_000);

  itNeeds(DHCP_CAPS, 'proxy mode: plain DHCP clients get nothing at all', async () => {
    const f = await start('proxy');
    const u = udhcpc(hosts[0]);
    expect(u.status).not.toBe(0);
    expect(u.stdout).not.toMatch(/bound/);
    const d = dhclient(hosts[1], ['-1']);
    expect(d.status).not.toBe(0);
    expect(await counter(f, 'received')).toBeGreaterThanOrEqual(4);
    expect(await counter(f, 'proxyOffers')).toBe(0);
    expect(existsSync(join(f.data, 'pxe', 'leases.json'))).toBe(false);
  }, 90_000);

  itNeeds(DHCP_CAPS, 'answers only on its interface: a client on the server\'s second interface gets no answer', async () => {
    const f = await start('full');
    const other = `${f.lab.server.ns}o`;
    spawnSync('ip', ['netns', 'add', other]);
    try {
      spawnSync('ip', ['-n', f.lab.server.ns, 'link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', other]);
      spawnSync('ip', ['-n', f.lab.server.ns, 'addr', 'add', '10.77.1.1/24', 'dev', 'eth1']);
      spawnSync('ip', ['-n', f.lab.server.ns, 'link', 'set', 'eth1', 'up']);
      spawnSync('ip', ['-n', other, 'link', 'set', 'eth0', 'up']);
      const rx = () => JSON.parse(f.lab.execIn(f.lab.server.ns, 'ip', ['-s', '-j', 'link', 'show', 'eth1']))[0].stats64.rx.packets as number;
      const received = await counter(f, 'received');
      const rxBefore = rx();
      const u = spawnSync('ip', ['netns', 'exec', other, 'busybox', 'udhcpc', '-i', 'eth0', '-f', '-n', '-q', '-t', '3', '-T', '1', '-s', join(dir, 'udhcpc.sh')], { encoding: 'utf8' });
      expect(u.status).not.toBe(0);
      expect(rx() - rxBefore).toBeGreaterThanOrEqual(3); // the DISCOVERs reached the server's namespace...
      expect(await counter(f, 'received')).toBe(received); // ...and never its DHCP socket
      expect(udhcpc(hosts[0]).stdout).toMatch(/bound ip=10\.77\.0\.100/); // while eth0 is served
    } finally {
      spawnSync('ip', ['netns', 'del', other]);
    }
  }, 90_000);

  // ---- real PXE firmware in qemu ----

  interface VmCase {
    name: string;
    mode: 'full' | 'proxy';
    firmware: 'bios' | 'uefi';
    /** NIC: e1000 carries qemu's iPXE ROM; virtio-net without a ROM leaves PXE to OVMF itself. */
    nic: 'e1000' | 'virtio-ovmf';
    binary: string;
  }
  const cases: VmCase[] = [
    { name: 'BIOS, iPXE ROM, full DHCP', mode: 'full', firmware: 'bios', nic: 'e1000', binary: 'undionly.kpxe' },
    { name: 'BIOS, iPXE ROM, proxyDHCP beside dnsmasq', mode: 'proxy', firmware: 'bios', nic: 'e1000', binary: 'undionly.kpxe' },
    { name: 'UEFI (OVMF), iPXE ROM, full DHCP', mode: 'full', firmware: 'uefi', nic: 'e1000', binary: 'ipxe.efi' },
    { name: 'UEFI (OVMF), iPXE ROM, proxyDHCP beside dnsmasq', mode: 'proxy', firmware: 'uefi', nic: 'e1000', binary: 'ipxe.efi' },
    { name: 'UEFI, OVMF\'s own PXE client, proxyDHCP beside dnsmasq', mode: 'proxy', firmware: 'uefi', nic: 'virtio-ovmf', binary: 'ipxe.efi' },
  ];

  for (const c of cases) {
    itNeeds(VM_CAPS, `boots ${c.name}: iPXE over TFTP, script and kernel over HTTP, marker on the console`, async () => {
      if (!existsSync(join(bootDir, 'initrd.img'))) makeBootFiles(bootDir);
      const f = await start(c.mode, ['--boot-dir', bootDir, '--pxe-idle', 'agent']);
      const lab = f.lab;
      // Proxy cases: the administrator names the machine (its script carries a boot credential);
      // full cases: only --pxe-idle boots it (no credential, its agent would be unverified).
      const named = c.mode === 'proxy';
      if (named) {
        mkdirSync(join(f.data, 'pxe'), { recursive: true });
        writeFileSync(join(f.data, 'pxe', 'machines.json'), JSON.stringify({ '52:54:00:77:00:01': { action: 'agent' } }));
      }
      // radvd: without a router advertisement iPXE waits ~13 s for IPv6 each time (LAB-NOTES).
      writeFileSync(join(dir, 'radvd.conf'), 'interface eth0 { AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4; prefix fd77::/64 { AdvOnLink on; AdvAutonomous on; }; };\n');
      lab.execIn(lab.server.ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1']);
      lab.spawnIn(lab.server.ns, 'radvd', ['-n', '-C', join(dir, 'radvd.conf'), '-p', join(dir, 'radvd.pid'), '-m', 'stderr']);
      let dnsmasq: Proc | undefined;
      if (c.mode === 'proxy') {
        // The school's own DHCP server, knowing nothing of PXE.
        const school = lab.addBareHost(9);
        lab.execIn(school.ns, 'ip', ['addr', 'add', '10.77.0.2/24', 'dev', 'eth0']);
        const child = lab.spawnIn(school.ns, 'dnsmasq', ['--no-daemon', '--port=0', '--interface=eth0', '--bind-interfaces', '--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h', `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`, `--pid-file=${join(dir, 'dnsmasq.pid')}`]);
        dnsmasq = { child, out: '', exited: new Promise((r) => child.on('close', r)) };
        child.stderr!.on('data', (d) => (dnsmasq!.out += d));
      }
      const tap = lab.addTap('tap0');
      const mac = '52:54:00:77:00:01';
      const args = ['-m', '512', '-nographic', '-machine', 'graphics=off', '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '-boot', 'n', '-no-reboot'];
      args.push('-device', c.nic === 'e1000' ? `e1000,netdev=n0,mac=${mac}` : `virtio-net-pci,netdev=n0,mac=${mac},romfile=`);
      if (c.firmware === 'uefi') args.unshift('-bios', '/usr/share/ovmf/OVMF.fd');
      const t0 = Date.now();
      const q = lab.spawnIn(lab.bridgeNamespace, 'qemu-system-x86_64', args);
      let serial = '';
      q.stdout!.on('data', (d) => (serial += d));
      q.stderr!.on('data', (d) => (serial += d));
      try {
        // The whole marker line: the VM is killed once it is there, and the token is at its end.
        await until(() => new RegExp(`${MARKER}[^\n]*\n`).test(serial), 150_000, `the VM to print ${MARKER}`);
      } finally {
        q.kill('SIGKILL');
      }
      const seconds = (Date.now() - t0) / 1000;
      bootTimes.push(`${c.name}: ${seconds.toFixed(1)} s`);
      const log = f.server!.out;
      expect(log).toMatch(new RegExp(`tftp: sent ${c.binary.replace('.', '\\.')} to 10\\.77\\.0\\.\\d+`));
      expect(log).toMatch(/boot: script for 52:54:00:77:00:01: agent/);
      // The kernel came up with the server's TLS address, its certificate's fingerprint, and a boot credential only when the machine is named.
      const cmdline = new RegExp(`${MARKER} cmdline: .*clonecast\\.server=https://10\\.77\\.0\\.1:8080/ clonecast\\.fingerprint=${f.fingerprint}(?: clonecast\\.token=([0-9a-f]{64}))? clonecast\\.mac=52:54:00:77:00:01`).exec(serial);
      expect(cmdline, serial.slice(-2000)).not.toBeNull();
      if (named) {
        expect(cmdline![1], 'a named machine gets a credential').toMatch(/^[0-9a-f]{64}$/);
        expect(log).toMatch(/boot: script for 52:54:00:77:00:01: agent \(machines\.json\), with a boot credential for this machine/);
        expect(log).not.toContain(cmdline![1]);
      } else {
        expect(cmdline![1], 'an unnamed machine gets no credential').toBeUndefined();
        expect(serial).not.toMatch(/clonecast\.token/);
        expect(log).toMatch(/boot: script for 52:54:00:77:00:01: agent \(--pxe-idle\), no credential \(unverified\)/);
      }
      if (c.mode === 'proxy') {
        expect(log).toMatch(/proxyDHCP: 52:54:00:77:00:01 \(arch \d\) boots/);
        // The address came from dnsmasq, not from us.
        expect(readFileSync(join(dir, 'dnsmasq.leases'), 'utf8')).toMatch(/52:54:00:77:00:01 10\.77\.0\.1\d\d/);
        expect(existsSync(join(f.data, 'pxe', 'leases.json'))).toBe(false);
        dnsmasq?.child.kill();
      } else {
        expect(leases(f).map((l) => l.mac)).toContain(mac);
      }
    }, 200_000);
  }
});
