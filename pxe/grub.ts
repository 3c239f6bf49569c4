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

/**
 * GRUB's name for a file on this server's TFTP root: (tftp,HOST)/PATH, HOST
 * from the boot listener's URL (the server's address on the boot network).
 * TFTP, not HTTP: Debian's signed network GRUB 2.06 has no http built in.
 */
export function grubTftpPath(base: string, path: string): string {
  return `(tftp,${new URL(base).hostname})/${path}`;
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
    `linux ${grubQuote(grubTftpPath(o.base, `boot/${o.kernel}`))} ${args.map(grubQuote).join(' ')}`,
    `initrd ${grubQuote(grubTftpPath(o.base, `boot/${o.initrd}`))}`,
    'boot',
    `echo ${grubQuote('clonecast: the boot failed; trying again in 10 s')}`,
    'sleep 10',
    `configfile ${grubQuote(grubTftpPath(o.base, `grub/clonecast/${o.mac}.cfg`))}`,
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
