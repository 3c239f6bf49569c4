import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkOverrides, defaultPool, ipxeScript, machineOverride, parsePool, prepareTftpRoot } from '../../pxe/service.js';
import { cli, itNeeds, tempDir } from '../helpers.js';

describe('network boot wiring', () => {
  it('says what to install when the iPXE binaries are missing', () => {
    const dir = tempDir('ipxe');
    mkdirSync(join(dir, 'empty'));
    expect(() => prepareTftpRoot(join(dir, 'root'), join(dir, 'empty'))).toThrow(/apt-get install ipxe/);
  });

  itNeeds(['qemu'], 'copies the iPXE binaries into the TFTP root', () => {
    const root = join(tempDir('tftproot'), 'root');
    prepareTftpRoot(root);
    for (const f of ['undionly.kpxe', 'ipxe.efi', 'snponly.efi']) expect(existsSync(join(root, f))).toBe(true);
  });

  it('derives the default pool from the interface and parses --pool', () => {
    expect(defaultPool('10.77.0.1', '255.255.255.0')).toEqual({ start: '10.77.0.100', end: '10.77.0.199' });
    expect(defaultPool('10.77.3.9', '255.255.0.0')).toEqual({ start: '10.77.0.100', end: '10.77.0.199' });
    expect(defaultPool('10.77.0.129', '255.255.255.192')).toEqual({ start: '10.77.0.160', end: '10.77.0.190' });
    expect(parsePool('10.77.0.50-10.77.0.60')).toEqual({ start: '10.77.0.50', end: '10.77.0.60' });
    expect(() => parsePool('10.77.0.60-10.77.0.50')).toThrow(/START-END/);
  });

  it('an iPXE script without a credential carries no clonecast.token at all', () => {
    const o = { base: 'http://10.77.0.1:8080/', mac: '52:54:00:00:00:01', kernel: 'vmlinuz', initrd: 'initrd.img' };
    expect(ipxeScript('agent', o)).not.toMatch(/token/);
    expect(ipxeScript('menu', { ...o, token: '' })).not.toMatch(/token/);
  });

  it('writes iPXE scripts with absolute URLs and the initrd name the UEFI kernel needs', () => {
    const fingerprint = 'AB:'.repeat(31) + 'CD';
    const o = { base: 'http://10.77.0.1:8081/', server: 'https://10.77.0.1:8080/', fingerprint, mac: '52:54:00:00:00:01', token: 'x'.repeat(48), kernel: 'vmlinuz', initrd: 'initrd.img' };
    const agent = ipxeScript('agent', o);
    expect(agent).toMatch(/^#!ipxe\n/);
    // Firmware fetches over the plain-HTTP boot listener; the agent gets the TLS address and the certificate's fingerprint.
    expect(agent).toContain(`kernel http://10.77.0.1:8081/boot/files/vmlinuz initrd=initrd.img clonecast.server=https://10.77.0.1:8080/ clonecast.fingerprint=${fingerprint} clonecast.token=${'x'.repeat(48)}`);
    expect(agent).toMatch(/initrd http:\/\/10\.77\.0\.1:8081\/boot\/files\/initrd\.img/);
    expect(ipxeScript('local', o)).toMatch(/sanboot --no-describe --drive 0x80 \|\| exit/);
    expect(ipxeScript('menu', o)).toMatch(/choose --timeout 10000 --default local/);
  });

  it('reads per-machine overrides from DATA/pxe/machines.json and refuses a broken one', () => {
    const data = tempDir('ovr');
    mkdirSync(join(data, 'pxe'));
    expect(machineOverride(data, '52:54:00:00:00:01')).toBeUndefined();
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ '52:54:00:00:00:01': { file: 'snponly.efi', action: 'menu' }, '52-54-00-00-00-02': { ignore: true } }));
    checkOverrides(data);
    // The file is looked at again at most once a second (a second later here).
    const later = Date.now() + 1000;
    expect(machineOverride(data, '52:54:00:00:00:01', later)).toEqual({ file: 'snponly.efi', action: 'menu' });
    expect(machineOverride(data, '52:54:00:00:00:02', later)).toEqual({ ignore: true });
    writeFileSync(join(data, 'pxe', 'machines.json'), JSON.stringify({ 'pc-1': {} }));
    expect(() => checkOverrides(data)).toThrow(/"pc-1" is not a MAC address/);
    writeFileSync(join(data, 'pxe', 'machines.json'), '{');
    expect(() => checkOverrides(data)).toThrow(/is not JSON/);
  });

  it('serve --pxe needs --interface and a known mode', async () => {
    const data = join(tempDir('pxecli'), 'data');
    const a = await cli(['serve', '--data', data, '--listen', '127.0.0.1:0', '--pxe', 'full']);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/--pxe needs --interface IF/);
    const b = await cli(['serve', '--data', data, '--listen', '127.0.0.1:0', '--pxe', 'maybe']);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--pxe takes proxy .* or full/);
    const c = await cli(['serve', '--data', data, '--listen', '127.0.0.1:0', '--pxe', 'full', '--interface', 'lo', '--pxe-known-only', '--pxe-unknown', 'boot']);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/--pxe-known-only ignores unknown machines; it cannot go with --pxe-unknown boot/);
  });
});

describe('one error path per boot service', () => {
  it('a failure of the DHCP socket ends the service once: every socket closed, the error reported once, nothing thrown', async () => {
    const { DhcpServer } = await import('../../pxe/dhcp-server.js');
    const server = new DhcpServer({ mode: 'proxy', serverAddress: '127.0.0.1', netmask: '255.0.0.0', boot: () => null, port: 0, pxePort: 0, bindAddress: '127.0.0.1' });
    await server.start();
    const closed: (Error | undefined)[] = [];
    server.on('closed', (err?: Error) => closed.push(err));
    const sockets = server as unknown as { main: import('node:dgram').Socket; pxe: import('node:dgram').Socket };
    sockets.main.emit('error', new Error('EIO on the socket'));
    sockets.pxe.emit('error', new Error('a second failure'));
    await new Promise((r) => setTimeout(r, 50));
    expect(closed.map((e) => e?.message)).toEqual(['EIO on the socket']);
    expect(() => sockets.main.address()).toThrow(); // closed
    expect(() => sockets.pxe.address()).toThrow();
    await server.close(); // again: nothing happens
    expect(closed).toHaveLength(1);
  });

  it('a failure of the TFTP listener ends the service once and every transfer with it', async () => {
    const { TftpServer } = await import('../../pxe/tftp-server.js');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const root = mkdtempSync(join(tmpdir(), 'cc-tftp-'));
    try {
      const server = new TftpServer({ root, address: '127.0.0.1', port: 0 });
      await server.start();
      const closed: (Error | undefined)[] = [];
      server.on('closed', (err?: Error) => closed.push(err));
      const listener = (server as unknown as { socket: import('node:dgram').Socket }).socket;
      listener.emit('error', new Error('ENETDOWN'));
      listener.emit('error', new Error('again'));
      expect(closed.map((e) => e?.message)).toEqual(['ENETDOWN']);
      expect(() => listener.address()).toThrow();
      server.close();
      expect(closed).toHaveLength(1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
