import { describe, expect, it } from 'vitest';
import type { ApiContext } from '../../server/api.js';
import { grubOverTftp } from '../../server/boot-grub.js';
import { BOOT_SCRIPT_LIMITS, BootScriptLimits } from '../../server/boot-limits.js';
import { DEFAULT_RATE_KEYS } from '../../pxe/rate-limit.js';

const VICTIM = '52:54:00:00:7e:01';

/** A context whose clock never refills a bucket (an hour per token), a registry that records events, and one known machine. */
function context(): { ctx: ApiContext; events: string[] } {
  const events: string[] = [];
  const bootLimits = new BootScriptLimits({ perAddress: { ...BOOT_SCRIPT_LIMITS.perAddress, everyMs: 3_600_000 }, perMac: { ...BOOT_SCRIPT_LIMITS.perMac, everyMs: 3_600_000 } });
  const pxe = { knownOnly: false, knows: (mac: string) => mac === VICTIM };
  const ctx = {
    boot: { script: (mac: string, format: string) => `# ${format} ${mac}\n` },
    pxe: () => pxe,
    bootLimits,
    registry: { event: (mac: string, kind: string, text: string) => events.push(`${mac} ${kind} ${text}`), get: (mac: string) => (mac === VICTIM ? { address: '10.0.0.5' } : undefined) },
  } as unknown as ApiContext;
  return { ctx, events };
}

/** A made-up MAC and a made-up source address for request i. */
function spoofed(i: number): { mac: string; client: string } {
  const b = [(i >> 16) & 255, (i >> 8) & 255, i & 255].map((n) => n.toString(16).padStart(2, '0'));
  return { mac: `02:00:00:${b.join(':')}`, client: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` };
}

describe('Secure Boot GRUB config over TFTP', () => {
  it('spoofed requests for made-up MACs cannot evict a known machine\'s per-MAC bucket and reset its limit', () => {
    const { ctx } = context();
    const answers = () => Array.from({ length: 8 }, (_, i) => 'content' in grubOverTftp(ctx, VICTIM, `10.200.0.${i + 1}`));
    // The victim's burst is used up, from several addresses.
    expect(answers().filter(Boolean).length).toBe(BOOT_SCRIPT_LIMITS.perMac.burst);
    // More made-up MACs than the table holds, each from its own forged address.
    for (let i = 0; i < DEFAULT_RATE_KEYS + 100; i++) {
      const s = spoofed(i);
      expect('content' in grubOverTftp(ctx, s.mac, s.client)).toBe(true);
    }
    // The victim is still limited: its bucket was not pushed out.
    expect(answers().filter(Boolean).length).toBe(0);
  });

  it('logs a boot event for the machine, as the HTTP boot routes do', () => {
    const { ctx, events } = context();
    expect(grubOverTftp(ctx, VICTIM, '10.200.0.9')).toEqual({ content: `# grub ${VICTIM}\n` });
    expect(events).toEqual([`${VICTIM} boot network boot: fetched its boot config over TFTP (Secure Boot)`]);
  });

  it('a refused request (rate limit) logs no boot event', () => {
    const { ctx, events } = context();
    for (let i = 0; i < 6; i++) grubOverTftp(ctx, VICTIM, '10.200.0.9');
    expect(events.length).toBe(BOOT_SCRIPT_LIMITS.perMac.burst);
  });

  it('someone asking for a known machine\'s config from another address cannot use up its boots: from its own address it has a bucket of its own', () => {
    const { ctx } = context();
    // The attacker drains the shared per-MAC allowance for the victim's MAC from 10.0.0.200 (and more).
    let got = 0;
    for (let i = 0; i < 20; i++) if ('content' in grubOverTftp(ctx, VICTIM, `10.0.0.${200 + (i % 10)}`)) got++;
    expect(got).toBe(BOOT_SCRIPT_LIMITS.perMac.burst);
    expect('error' in grubOverTftp(ctx, VICTIM, '10.0.0.201')).toBe(true);
    // The machine itself, from the address it is known at, still boots (before the fix it shared the drained bucket).
    expect(grubOverTftp(ctx, VICTIM, '10.0.0.5')).toEqual({ content: `# grub ${VICTIM}\n` });
  });
});
