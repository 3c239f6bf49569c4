/**
 * The boot routes an attacker on the LAN can reach without a token: boot
 * scripts asked for in bulk (by one address, or about one MAC) answer 429
 * with Retry-After, a bad percent-encoding in a boot file name is a 400 (it
 * was a 500, then a 404), and under --pxe-known-only a MAC the server does
 * not know gets no script.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { handle, State, type ApiContext } from '../../server/api.js';
import { BOOT_SCRIPT_LIMITS, BootScriptLimits } from '../../server/boot-limits.js';
import { tempDir } from '../helpers.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** The API's handler with network boot on, and nothing else of a server behind it. */
async function bootServer(pxe?: { knownOnly: boolean; knows: (mac: string) => boolean }): Promise<string> {
  const dir = tempDir('bootroute');
  mkdirSync(join(dir, 'boot'));
  writeFileSync(join(dir, 'boot', 'vmlinuz'), 'kernel');
  // The default bursts, refilled slowly enough that a busy machine cannot see a refill mid-test.
  const bootLimits = new BootScriptLimits({ perAddress: { ...BOOT_SCRIPT_LIMITS.perAddress, everyMs: 3_600_000 }, perMac: { ...BOOT_SCRIPT_LIMITS.perMac, everyMs: 3_600_000 } });
  const ctx = { boot: { dir: join(dir, 'boot'), script: (mac: string) => `#!ipxe\necho ${mac}\n` }, pxe: () => pxe, bootLimits, registry: { event: () => undefined } } as unknown as ApiContext;
  const state = new State(ctx);
  const server = createServer((req, res) => void handle(ctx, state, req, res));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return `http://127.0.0.1:${port}`;
}

const mac = (i: number) => `52:54:00:00:01:${i.toString(16).padStart(2, '0')}`;

describe('boot routes against a client on the LAN', () => {
  it('one MAC\'s script is sent its burst of times, then 429 with Retry-After and no script', async () => {
    const base = await bootServer();
    const { burst } = BOOT_SCRIPT_LIMITS.perMac;
    for (let i = 0; i < burst; i++) {
      const r = await fetch(`${base}/boot/ipxe?mac=${mac(1)}`);
      expect(r.status).toBe(200);
      expect(await r.text()).toBe(`#!ipxe\necho ${mac(1)}\n`);
    }
    const r = await fetch(`${base}/boot/ipxe?mac=${mac(1)}`);
    expect(r.status).toBe(429);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(3000);
    expect(await r.text()).not.toMatch(/ipxe/);
    // Another MAC is not held back by that one.
    expect((await fetch(`${base}/boot/ipxe?mac=${mac(2)}`)).status).toBe(200);
  });

  it('one address asking for many MACs\' scripts gets its burst, then 429', async () => {
    const base = await bootServer();
    const { burst } = BOOT_SCRIPT_LIMITS.perAddress;
    const statuses: number[] = [];
    for (let i = 0; i < burst + 5; i++) statuses.push((await fetch(`${base}/boot/ipxe?mac=${mac(i)}`)).status);
    expect(statuses.slice(0, burst).every((s) => s === 200)).toBe(true);
    expect(statuses.slice(burst)).toEqual([429, 429, 429, 429, 429]);
  });

  it('/boot/files/%E0%A4%A (bad percent-encoding) is a 400 that says why; a real file is served', async () => {
    const base = await bootServer();
    const bad = await fetch(`${base}/boot/files/%E0%A4%A`);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: { code: 'CLONECAST_ERR_USAGE', message: 'a boot file name must be valid percent-encoded UTF-8' } });
    const ok = await fetch(`${base}/boot/files/vmlinuz`);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('kernel');
  });

  it('--pxe-known-only: no script for a MAC the server does not know', async () => {
    const base = await bootServer({ knownOnly: true, knows: (m) => m === mac(1) });
    const unknown = await fetch(`${base}/boot/ipxe?mac=${mac(9)}`);
    expect(unknown.status).toBe(404);
    expect(await unknown.text()).not.toMatch(/ipxe/);
    expect((await fetch(`${base}/boot/ipxe?mac=${mac(1)}`)).status).toBe(200);
  });
});
