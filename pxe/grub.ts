/**
 * The per-machine GRUB config of the Secure Boot path: what ipxeScript() is
 * for iPXE, the same actions and the same kernel command line, in GRUB's
 * script language. Every value is quoted (grubQuote): nothing from a DHCP
 * packet, an agent or a config file lands unescaped in the script.
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { BootAction } from './service.js';

/**
 * One GRUB word holding s literally: single quotes, in which GRUB expands
 * nothing (a quote itself is closed, escaped and reopened, as in sh).
 * Control characters (a newline would end the command) are refused.
 */
export function grubQuote(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(s)) throw new ClonecastError(ERR.USAGE, `a GRUB config value holds a control character: ${JSON.stringify(s)}`);
  return `'${s.replace(/'/g, "'\\''")}'`;
}

/** GRUB's name for a file on the plain-HTTP boot listener: (http,HOST:PORT)/PATH. */
export function grubHttpPath(base: string, path: string): string {
  const u = new URL(path, base);
  if (u.protocol !== 'http:') throw new ClonecastError(ERR.USAGE, `GRUB fetches over plain HTTP; got ${base}`);
  return `(http,${u.hostname}:${u.port === '' ? '80' : u.port})${u.pathname}${u.search}`;
}

/**
 * The GRUB config for one machine. Same inputs and same command line as
 * ipxeScript(): the credential only on the kernel command line, never in a URL.
 */
export function grubConfig(action: BootAction, o: { base: string; server: string; fingerprint: string; mac: string; token?: string; kernel: string; initrd: string; cmdline?: string }): string {
  const args = [
    `clonecast.server=${o.server}`,
    `clonecast.fingerprint=${o.fingerprint}`,
    ...(o.token !== undefined && o.token !== '' ? [`clonecast.token=${o.token}`] : []),
    `clonecast.mac=${o.mac}`,
    ...(o.cmdline ?? 'console=tty0 console=ttyS0,115200 quiet').split(/\s+/).filter((a) => a !== ''),
  ];
  const agent = [
    `echo ${grubQuote(`clonecast: starting the agent for ${o.mac}`)}`,
    `linux ${grubQuote(grubHttpPath(o.base, `boot/files/${encodeURIComponent(o.kernel)}`))} ${args.map(grubQuote).join(' ')}`,
    `initrd ${grubQuote(grubHttpPath(o.base, `boot/files/${encodeURIComponent(o.initrd)}`))}`,
    'boot',
    `echo ${grubQuote('clonecast: the boot failed; trying again in 10 s')}`,
    'sleep 10',
    `configfile ${grubQuote(grubHttpPath(o.base, `boot/grub?mac=${encodeURIComponent(o.mac)}`))}`,
  ];
  // exit hands control back to the firmware, which boots the next entry of its boot order (the disk).
  const local = [`echo ${grubQuote('clonecast: no work for this machine; booting from its disk')}`, 'exit'];
  let body: string[];
  if (action === 'agent') body = agent;
  else if (action === 'local') body = local;
  else {
    const indent = (lines: string[]) => lines.map((l) => `  ${l}`);
    body = [
      'set timeout=10',
      'set default=local',
      'menuentry \'Start the clonecast agent (imaging)\' --id agent {',
      ...indent(agent),
      '}',
      'menuentry \'Boot from the local disk\' --id local {',
      ...indent(local),
      '}',
    ];
  }
  return `# clonecast: boot config for ${o.mac.replace(/[^0-9a-f:]/g, '')}\n${body.join('\n')}\n`;
}
