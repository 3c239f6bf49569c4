/**
 * The Secure Boot path's per-machine GRUB config as the TFTP server asks for
 * it (grub/clonecast/MAC.cfg): the same rules as the /boot/ipxe and
 * /boot/grub routes (server/api.ts): the per-address and per-MAC limits of
 * one shared limiter (known machines' buckets apart from made-up MACs',
 * since a UDP source address can be forged), --pxe-known-only, and the
 * same `boot` event in the machine's log.
 */
import type { ApiContext } from './api.js';
import { BootScriptLimits } from './boot-limits.js';

/** Where a known machine is expected to ask from: its DHCP lease, else its agent's last address. */
export function ownAddress(c: ApiContext, mac: string): string | undefined {
  return c.pxe?.()?.dhcp?.leases?.lastIp(mac) ?? c.registry.get?.(mac)?.address;
}

/** The GRUB config for mac, asked by client (an IPv4 address), or why not. */
export function grubOverTftp(c: ApiContext, mac: string, client: string): { error: string } | { content: string } {
  if (c.boot === undefined) return { error: 'network boot is starting; try again' };
  c.bootLimits ??= new BootScriptLimits();
  const pxe = c.pxe?.();
  const known = pxe?.knows(mac) ?? false;
  const wait = c.bootLimits.wait(client, mac, Date.now(), known, known && ownAddress(c, mac) === client);
  if (wait > 0) return { error: `too many boot config requests; try again in ${Math.ceil(wait / 1000)} s` };
  if (pxe?.knownOnly === true && !known) return { error: `${mac} is not a machine this server knows (--pxe-known-only)` };
  c.registry.event(mac, 'boot', 'network boot: fetched its boot config over TFTP (Secure Boot)');
  return { content: c.boot.script(mac, 'grub') };
}
