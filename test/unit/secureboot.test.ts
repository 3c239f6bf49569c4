/**
 * The Secure Boot path's pieces: the boot file DHCP hands out by
 * architecture with and without --secure-boot (and per machine), the files
 * TFTP serves beside shim, the per-machine GRUB config (every value quoted:
 * nothing from a packet or a config file runs as GRUB script), the
 * /boot/grub route, and the signature checks on Debian's files and on
 * hostile ones.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeDhcp, encodeDhcp, OPT, type DhcpPacket } from '../../protocol/dhcp.js';
import { grubConfig, grubQuote } from '../../pxe/grub.js';
import { moduleSigned, peSignature, secureBootFile, secureBootModeError, staticGrubConfig, unsignedModules } from '../../pxe/secureboot.js';
import { startPxe, type PxeServices } from '../../pxe/service.js';
import { handle, State, type ApiContext } from '../../server/api.js';
import { cachedKernelPackage } from '../../pxe/bootenv.js';
import { cli, itNeeds, ROOT, seeded, tempDir, until } from '../helpers.js';

function fixture(name: string): DhcpPacket {
  const text = readFileSync(join(ROOT, 'test/fixtures/dhcp', `${name}.hex`), 'utf8');
  return decodeDhcp(Buffer.from(text.split('\n').filter((l) => !l.startsWith('#')).join(''), 'hex'));
}

/** p from another MAC and with another architecture (option 93), or none. */
function as(p: DhcpPacket, mac: string, arch: number | null): DhcpPacket {
  const options = new Map(p.options);
  if (arch === null) options.delete(OPT.CLIENT_ARCH);
  else options.set(OPT.CLIENT_ARCH, Buffer.from([arch >> 8, arch & 0xff]));
  const chaddr = Buffer.alloc(16);
  Buffer.from(mac.replace(/:/g, ''), 'hex').copy(chaddr);
  return { ...p, chaddr, xid: (Math.random() * 2 ** 32) >>> 0, options };
}

const running: PxeServices[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const p of running.splice(0)) await p.close();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** PXE services on loopback (full DHCP by default: Secure Boot needs it) with a boot folder holding stand-ins for the signed files. */
async function pxeOnLo(o: { mode?: 'proxy' | 'full'; secureBoot?: boolean; machines?: Record<string, unknown>; signed?: boolean; grubConfig?: (mac: string, client: string) => { error: string } | { content: string } }) {
  const data = tempDir('sbpxe');
  const ipxeDir = join(data, 'ipxe');
  mkdirSync(ipxeDir);
  for (const f of ['undionly.kpxe', 'ipxe.efi', 'snponly.efi']) writeFileSync(join(ipxeDir, f), `${f} stand-in`);
  const bootDir = join(data, 'boot');
  mkdirSync(bootDir);
  if (o.signed !== false) for (const f of ['shimx64.efi', 'grubx64.efi', 'vmlinuz', 'initrd.img']) writeFileSync(join(bootDir, f), `${f} stand-in`);
  mkdirSync(join(data, 'pxe'));
  if (o.machines !== undefined) writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify(o.machines));
  const pxe = await startPxe({ mode: o.mode ?? 'full', interface: 'lo', httpBase: 'http://127.0.0.1:8081/', dataRoot: data, bootDir, ipxeDir, secureBoot: o.secureBoot, grubConfig: o.grubConfig, dhcpPort: 0, pxePort: 0, tftpPort: 0 });
  running.push(pxe);
  const client = createSocket('udp4');
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  /** The file the server chose for this DISCOVER (from its 'boot' event), or null when it said nothing. */
  const bootFile = async (p: DhcpPacket): Promise<string | null> => {
    const seen = new Promise<string>((r) => pxe.dhcp.once('boot', (b: { file: string }) => r(b.file)));
    client.send(encodeDhcp(p), pxe.dhcp.ports().dhcp, '127.0.0.1');
    return Promise.race([seen, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
  };
  // The listener's port (startPxe binds port 0 here).
  const tftpPort = (pxe.tftp as unknown as { socket: Socket }).socket.address().port;
  return { pxe, data, bootFile, tftpPort, close: () => client.close() };
}

const OVMF = 'ovmf-uefi-discover'; // OVMF's own PXE client, arch 7
const BIOS = 'ipxe-bios-discover';

describe('Secure Boot: the boot file by architecture', () => {
  itNeeds(['root'], 'without --secure-boot UEFI gets iPXE; machines.json secureBoot sends one UEFI machine to shim, never a BIOS one', async () => {
    const s = await pxeOnLo({ machines: { '52:54:00:00:5b:01': { secureBoot: true }, '52:54:00:00:5b:02': { secureBoot: true } } });
    try {
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5b:10', 7))).toBe('ipxe.efi');
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5b:11', 9))).toBe('ipxe.efi');
      expect(await s.bootFile(as(fixture(BIOS), '52:54:00:00:5b:12', 0))).toBe('undionly.kpxe');
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5b:01', 7))).toBe('shimx64.efi');
      expect(await s.bootFile(as(fixture(BIOS), '52:54:00:00:5b:02', 0))).toBe('undionly.kpxe');
    } finally {
      s.close();
    }
  });

  itNeeds(['root'], 'with --secure-boot arch 7 and 9 get shim, BIOS keeps iPXE, machines.json secureBoot false opts one machine out', async () => {
    const s = await pxeOnLo({ secureBoot: true, machines: { '52:54:00:00:5c:01': { secureBoot: false } } });
    try {
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5c:10', 7))).toBe('shimx64.efi');
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5c:11', 9))).toBe('shimx64.efi');
      expect(await s.bootFile(as(fixture(BIOS), '52:54:00:00:5c:12', 0))).toBe('undionly.kpxe');
      expect(await s.bootFile(as(fixture(BIOS), '52:54:00:00:5c:13', null))).toBe('undionly.kpxe');
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5c:01', 7))).toBe('ipxe.efi');
      // IA32 UEFI (6): no shim for it here, and no iPXE either: not answered.
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5c:14', 6))).toBeNull();
    } finally {
      s.close();
    }
  });

  itNeeds(['root'], 'machines.json secureBoot without the signed files: serve starts, and that machine gets iPXE rather than nothing', async () => {
    const s = await pxeOnLo({ signed: false, machines: { '52:54:00:00:5c:21': { secureBoot: true } } });
    try {
      expect(await s.bootFile(as(fixture(OVMF), '52:54:00:00:5c:21', 7))).toBe('ipxe.efi');
    } finally {
      s.close();
    }
  });

  it('--secure-boot with --pxe proxy is refused (GRUB would never find its config), saying to use --pxe full or point the site DHCP at this server', async () => {
    await expect(pxeOnLo({ mode: 'proxy', secureBoot: true })).rejects.toThrow(/Secure Boot does not work with --pxe proxy.*--pxe full.*next-server \(option 66\)/);
    expect(secureBootModeError('full')).toBeNull();
    const r = await cli(['serve', '--data', tempDir('sbserve'), '--listen', '127.0.0.1:0', '--pxe', 'proxy', '--interface', 'lo', '--secure-boot']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Secure Boot does not work with --pxe proxy/);
  });

  it('in proxy mode a machine sent to shim by machines.json gets iPXE instead, with a warning', () => {
    const warned: string[] = [];
    const state = { ready: true, warned: new Set<string>(), mode: 'proxy' as const };
    expect(secureBootFile(7, false, true, state, '52:54:00:00:5c:31', (_l, m) => warned.push(m))).toBeNull();
    expect(warned.join()).toMatch(/proxyDHCP \(use --pxe full\); it gets iPXE/);
    expect(secureBootFile(7, false, true, { ...state, mode: 'full' }, '52:54:00:00:5c:31')).toBe('shimx64.efi');
  });

  itNeeds(['root'], '--secure-boot without the signed files says what is missing and how to get them', async () => {
    await expect(pxeOnLo({ secureBoot: true, signed: false })).rejects.toThrow(/shimx64\.efi, grubx64\.efi missing in .*clonecast bootenv build/);
  });

  /** Reads a file from the TFTP server with tftp-hpa (asynchronously: the server answers from this process). */
  const tftpGet = (port: number, remote: string, local: string) =>
    new Promise<{ code: number; text: string }>((res) => execFile('tftp', ['-m', 'binary', '127.0.0.1', String(port), '-c', 'get', remote, local], { timeout: 30_000 }, (err, o, e) => res({ code: err === null && !/Error code/.test(`${o}${e}`) ? 0 : 1, text: `${o}${e}` })));

  itNeeds(['root', 'tftp'], 'TFTP serves shimx64.efi, grubx64.efi beside it, grub/grub.cfg chaining by MAC, and the kernel and initramfs', async () => {
    const s = await pxeOnLo({ secureBoot: true });
    try {
      const out = tempDir('sbtftp');
      for (const [remote, local] of [['shimx64.efi', 'shim'], ['grubx64.efi', 'grub'], ['/grub/grub.cfg', 'cfg'], ['/boot/vmlinuz', 'k'], ['/boot/initrd.img', 'i']]) {
        const r = await tftpGet(s.tftpPort, remote, join(out, local));
        expect(r.code, r.text).toBe(0);
      }
      expect(readFileSync(join(out, 'shim'), 'utf8')).toBe('shimx64.efi stand-in');
      expect(readFileSync(join(out, 'grub'), 'utf8')).toBe('grubx64.efi stand-in');
      expect(readFileSync(join(out, 'k'), 'utf8')).toBe('vmlinuz stand-in');
      expect(readFileSync(join(out, 'i'), 'utf8')).toBe('initrd.img stand-in');
      expect(readFileSync(join(out, 'cfg'), 'utf8')).toContain('configfile "$prefix/clonecast/${net_default_mac}.cfg"');
      // The kernel and initramfs come from the boot folder itself: no copy or link in the root.
      expect(readdirSync(s.pxe.tftpRoot).sort()).toEqual(['grub', 'grubx64.efi', 'ipxe.efi', 'shimx64.efi', 'snponly.efi', 'undionly.kpxe']);
    } finally {
      s.close();
    }
  });

  itNeeds(['root', 'tftp'], 'after a bootenv build while serve runs, TFTP serves the new kernel with the new initramfs, never the new kernel with the old one', async () => {
    const s = await pxeOnLo({ secureBoot: true });
    try {
      const boot = join(s.data, 'boot');
      const out = tempDir('sbrebuild');
      const pair = async (tag: string) => {
        for (const f of ['vmlinuz', 'initrd.img']) expect((await tftpGet(s.tftpPort, `/boot/${f}`, join(out, `${tag}-${f}`))).code).toBe(0);
        return ['vmlinuz', 'initrd.img'].map((f) => readFileSync(join(out, `${tag}-${f}`), 'utf8'));
      };
      expect(await pair('a')).toEqual(['vmlinuz stand-in', 'initrd.img stand-in']);
      // An older build wrote the kernel over the old one in place and renamed the initramfs in.
      writeFileSync(join(boot, 'vmlinuz'), 'vmlinuz 2');
      writeFileSync(join(boot, 'initrd.img.tmp'), 'initrd.img 2');
      renameSync(join(boot, 'initrd.img.tmp'), join(boot, 'initrd.img'));
      expect(await pair('b')).toEqual(['vmlinuz 2', 'initrd.img 2']);
      // The build now renames both in.
      for (const f of ['vmlinuz', 'initrd.img']) {
        writeFileSync(join(boot, `${f}.new`), `${f} 3`);
        renameSync(join(boot, `${f}.new`), join(boot, f));
      }
      expect(await pair('c')).toEqual(['vmlinuz 3', 'initrd.img 3']);
    } finally {
      s.close();
    }
  });

  /** The same with atftp, which takes a remote name with colons (tftp-hpa reads "a:b" as host:file). */
  const atftpGet = (port: number, remote: string, local: string) =>
    new Promise<{ code: number; text: string }>((res) => execFile('atftp', ['-g', '-r', remote, '-l', local, '127.0.0.1', String(port)], { timeout: 30_000 }, (err, o, e) => res({ code: err === null ? 0 : 1, text: `${o}${e}` })));

  itNeeds(['root', 'atftp'], 'a machine\'s GRUB config is made on request over TFTP, refused with the generator\'s reason, and leaves no file behind', async () => {
    const asked: string[] = [];
    const s = await pxeOnLo({
      secureBoot: true,
      grubConfig: (mac, client) => {
        asked.push(`${mac} ${client}`);
        return mac.endsWith(':ff') ? { error: 'too many boot config requests; try again in 5 s' } : { content: `# config for ${mac}\n` };
      },
    });
    try {
      const out = tempDir('sbgen');
      const r = await atftpGet(s.tftpPort, '/grub/clonecast/52:54:00:00:5e:01.cfg', join(out, 'a'));
      expect(r.code, r.text).toBe(0);
      expect(readFileSync(join(out, 'a'), 'utf8')).toBe('# config for 52:54:00:00:5e:01\n');
      const refused = await atftpGet(s.tftpPort, '/grub/clonecast/52:54:00:00:5e:ff.cfg', join(out, 'b'));
      expect(refused.text).toMatch(/too many boot config requests/);
      // Not a MAC of the fixed form: not generated, and no such file in the root either.
      for (const bad of ['/grub/clonecast/52:54:00:00:5e:0.cfg', "/grub/clonecast/x';reboot.cfg", '/grub/clonecast/../grub.cfg.cfg']) {
        const r2 = await atftpGet(s.tftpPort, bad, join(out, 'c'));
        expect(r2.code, bad).toBe(1);
      }
      expect(asked).toEqual(['52:54:00:00:5e:01 127.0.0.1', '52:54:00:00:5e:ff 127.0.0.1']);
      await until(() => readdirSync(join(s.data, 'pxe', 'generated')).length === 0, 10_000, 'the generated file to be removed');
    } finally {
      s.close();
    }
  });
});

/** What GRUB's lexer reads as syntax in a line: outside single quotes, a backslash escapes the next character. */
function unquoted(line: string): string {
  let out = '';
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\\') i++;
    else if (line[i] === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) return `${out}<unterminated quote>$`;
      i = end;
    } else out += line[i];
  }
  return out;
}

describe('Secure Boot: the per-machine GRUB config', () => {
  const base = { base: 'http://10.77.0.1:8081/', server: 'https://10.77.0.1:8080/', fingerprint: 'AB:'.repeat(31) + 'CD', mac: '52:54:00:00:00:01', kernel: 'vmlinuz', initrd: 'initrd.img' };

  it('passes the iPXE path\'s command line and loads the kernel and initramfs from the boot listener', () => {
    const cfg = grubConfig('agent', { ...base, token: 'f'.repeat(48) });
    expect(cfg).toContain(`linux '(tftp,10.77.0.1)/boot/vmlinuz' 'clonecast.server=https://10.77.0.1:8080/' 'clonecast.fingerprint=${base.fingerprint}' 'clonecast.token=${'f'.repeat(48)}' 'clonecast.mac=52:54:00:00:00:01' 'console=tty0' 'console=ttyS0,115200' 'quiet'`);
    expect(cfg).toContain("initrd '(tftp,10.77.0.1)/boot/initrd.img'");
    // The credential is on the command line only, never in a file name.
    expect(cfg.split('\n').filter((l) => l.includes('f'.repeat(48)))).toEqual([cfg.split('\n').find((l) => l.startsWith('linux '))]);
    expect(cfg).toContain("configfile '(tftp,10.77.0.1)/grub/clonecast/52:54:00:00:00:01.cfg'");
    expect(grubConfig('agent', base)).not.toMatch(/token/);
    expect(grubConfig('local', base)).toMatch(/^exit$/m);
    expect(grubConfig('menu', base)).toMatch(/set default=local/);
  });

  it('a hostile command line, token or file name lands quoted: no $, ;, backquote or brace reaches GRUB as syntax', () => {
    const evil = "x'; reboot; echo '$prefix `id` {a}";
    const cfg = grubConfig('agent', { ...base, token: evil, cmdline: `quiet ${evil}`, kernel: "vm'linuz;$x", initrd: '${root}' });
    for (const line of cfg.split('\n')) expect(unquoted(line), line).not.toMatch(/[$;`{}]/);
    expect(cfg).toContain("'clonecast.token=x'\\''; reboot; echo '\\''$prefix `id` {a}'");
    expect(() => grubConfig('agent', { ...base, token: 'a\nreboot' })).toThrow(/control character/);
    expect(() => grubQuote('a\rb')).toThrow(/control character/);
    expect(grubQuote("it's")).toBe("'it'\\''s'");
  });

  it('the static grub.cfg chains to the machine\'s config by GRUB\'s own MAC variable only', () => {
    const cfg = staticGrubConfig();
    expect(cfg).toContain('configfile "$prefix/clonecast/${net_default_mac}.cfg"');
    expect(cfg.match(/\$/g)?.length).toBe(3); // $prefix twice, ${net_default_mac} once: nothing else expands
  });
});

describe('Secure Boot: the /boot/grub route', () => {
  async function route(): Promise<{ url: string; asked: string[] }> {
    const asked: string[] = [];
    const ctx = { boot: { dir: tempDir('sbroute'), script: (mac: string, format?: string) => (asked.push(`${format}:${mac}`), `# ${format} ${mac}\n`) }, pxe: () => undefined, registry: { event: () => undefined } } as unknown as ApiContext;
    const state = new State(ctx);
    const server = createServer((req, res) => void handle(ctx, state, req, res));
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, asked };
  }

  it('answers a machine\'s GRUB config by MAC (as GRUB writes it) and refuses anything else as a MAC', async () => {
    const { url, asked } = await route();
    const ok = await fetch(`${url}/boot/grub?mac=52:54:00:00:5d:01`);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('# grub 52:54:00:00:5d:01\n');
    for (const bad of ["52:54:00:00:5d:01'%3Breboot", '${net_default_mac}', '']) {
      const r = await fetch(`${url}/boot/grub?mac=${bad}`);
      expect(r.status, bad).toBe(400);
      expect(await r.text()).toMatch(/boot\/grub needs \?mac=/);
    }
    expect(asked).toEqual(['grub:52:54:00:00:5d:01']);
  });

  it('shares the boot scripts\' per-MAC limit: a flood of GRUB config requests gets 429', async () => {
    const { url } = await route();
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await fetch(`${url}/boot/grub?mac=52:54:00:00:5d:02`)).status);
    expect(statuses.slice(0, 4)).toEqual([200, 200, 200, 200]);
    expect(statuses).toContain(429);
  });
});

describe('Secure Boot: signature checks', () => {
  itNeeds(['kernel'], 'Debian\'s kernel carries an Authenticode signature and its modules the appended-signature trailer; iPXE carries none', () => {
    const x = tempDir('sbkernel');
    spawnSync('dpkg-deb', ['-x', cachedKernelPackage()!, x]);
    const vmlinuz = readdirSync(join(x, 'boot')).find((f) => f.startsWith('vmlinuz-'))!;
    const sig = peSignature(readFileSync(join(x, 'boot', vmlinuz)));
    expect(sig?.signed).toBe(true);
    expect(sig?.signers.some((n) => /^Debian Secure Boot/.test(n))).toBe(true);
    const net = join(x, 'lib', 'modules', readdirSync(join(x, 'lib', 'modules'))[0], 'kernel', 'drivers', 'net', 'ethernet', 'intel');
    const mods = unsignedModules(net);
    expect(mods.checked).toBeGreaterThan(3);
    expect(mods.unsigned).toEqual([]);
    // The same module without its signature is found.
    const e1000 = readFileSync(join(net, 'e1000', 'e1000.ko'));
    const cut = join(x, 'cut');
    mkdirSync(cut);
    writeFileSync(join(cut, 'e1000.ko'), e1000.subarray(0, e1000.length - 600));
    writeFileSync(join(cut, 'e1000e.ko'), e1000);
    expect(unsignedModules(cut)).toEqual({ checked: 2, unsigned: ['e1000.ko'] });
    try {
      expect(peSignature(readFileSync('/usr/lib/ipxe/ipxe.efi'))?.signed).toBe(false);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  });

  it('a hostile PE (offsets past the end, a zero-length certificate, random bytes) is unsigned or not PE, never a throw', () => {
    // A minimal PE32+ header: MZ, e_lfanew 0x40, PE\0\0, optional header magic 0x20b, 16 directories.
    const pe = Buffer.alloc(0x200);
    pe.write('MZ', 0, 'latin1');
    pe.writeUInt32LE(0x40, 0x3c);
    pe.writeUInt32LE(0x00004550, 0x40);
    const opt = 0x40 + 24;
    pe.writeUInt16LE(0x20b, opt);
    pe.writeUInt32LE(16, opt + 108);
    const cert = (at: number, size: number, len: number, type = 2) => {
      const b = Buffer.from(pe);
      b.writeUInt32LE(at, opt + 112 + 32);
      b.writeUInt32LE(size, opt + 112 + 36);
      if (at + 8 <= b.length) {
        b.writeUInt32LE(len, at);
        b.writeUInt16LE(0x0200, at + 4);
        b.writeUInt16LE(type, at + 6);
      }
      return b;
    };
    expect(peSignature(cert(0x100, 0x100, 0x100))?.signed).toBe(true);
    expect(peSignature(cert(0x100, 0x100, 0x100, 1))?.signed).toBe(false); // X.509 type: not Authenticode
    expect(peSignature(cert(0x100, 0x1000, 0x100))?.signed).toBe(false); // table past the end
    expect(peSignature(cert(0x1f8, 0x8, 0x10000))?.signed).toBe(false); // entry past the table
    expect(peSignature(cert(0x100, 0x100, 0))?.signed).toBe(false); // zero-length entry
    expect(peSignature(cert(0xffffffff, 0xffffffff, 8))?.signed).toBe(false);
    expect(peSignature(pe.subarray(0, 0x50))).toBeNull();
    expect(peSignature(Buffer.from('not a PE file'))).toBeNull();
    const junk = seeded(1 << 16, 3);
    for (let i = 0; i < 2000; i++) {
      const n = (i * 97) % 0x800;
      const b = Buffer.from(junk.subarray(i, i + n));
      if (i % 2 === 0 && b.length >= 0x40) {
        b.write('MZ', 0, 'latin1');
        b.writeUInt32LE(i % 0x80, 0x3c);
      }
      expect(() => peSignature(b)).not.toThrow();
    }
  });

  it('a module is signed only with the exact trailer at its very end', () => {
    expect(moduleSigned(Buffer.from('\x7fELF...~Module signature appended~\n'))).toBe(true);
    expect(moduleSigned(Buffer.from('\x7fELF...~Module signature appended~\n\0'))).toBe(false);
    expect(moduleSigned(Buffer.from('~Module signature appended~'))).toBe(false);
    expect(moduleSigned(Buffer.alloc(0))).toBe(false);
  });
});
