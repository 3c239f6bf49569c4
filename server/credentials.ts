/**
 * Credentials of network-booted agents (docs/security.md, "Credentials").
 * A boot credential is random, issued only into the boot script of a machine
 * that a session or capture names or that the administrator named in
 * pxe/machines.json, short-lived, bound to that machine (its MAC) and to
 * what named it, good for one Hello, and kept here only as its SHA-256. On
 * that Hello the server gives the agent its own secret (Welcome.agent_secret),
 * kept hashed in the registry, for its reconnects and its manifest downloads.
 * Neither is ever accepted on capture or admin routes.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** Defaults of BootCredentials. */
export const CREDENTIAL_DEFAULTS = Object.freeze({
  /** A boot credential is good this long after its script was served, ms. */
  ttlMs: 15 * 60_000,
  /** Outstanding credentials per machine, at most (each script request makes one; the oldest go first). */
  perMachine: 4,
  /** Outstanding credentials in all, at most. */
  total: 4096,
});

/** What a boot credential was issued for. */
export type Binding = { kind: 'session'; id: number } | { kind: 'capture'; id: number } | { kind: 'machine' };

interface Issued {
  mac: string;
  binding: Binding;
  expires: number;
}

/** A new random secret: 32 bytes as hex. */
export function newSecret(): string {
  return randomBytes(32).toString('hex');
}

/** How a secret is kept: its SHA-256, hex. */
export function secretHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Compares a presented secret with a kept hash in constant time. */
export function secretMatches(presented: string | undefined | null, hash: string | undefined): boolean {
  if (typeof presented !== 'string' || presented === '' || hash === undefined || !/^[0-9a-f]{64}$/.test(hash)) return false;
  return timingSafeEqual(createHash('sha256').update(presented).digest(), Buffer.from(hash, 'hex'));
}

/** The boot credentials outstanding, kept in memory (a restarted server makes new ones when the machine boots again). */
export class BootCredentials {
  private readonly byHash = new Map<string, Issued>();

  constructor(private readonly o: { ttlMs?: number; now?: () => number } = {}) {}

  private now(): number {
    return this.o.now?.() ?? Date.now();
  }

  /** A new credential for this machine, bound to what named it. */
  issue(mac: string, binding: Binding): string {
    this.prune();
    const mine = [...this.byHash.entries()].filter(([, c]) => c.mac === mac);
    for (const [h] of mine.slice(0, Math.max(0, mine.length - CREDENTIAL_DEFAULTS.perMachine + 1))) this.byHash.delete(h);
    if (this.byHash.size >= CREDENTIAL_DEFAULTS.total) this.byHash.delete(this.byHash.keys().next().value!);
    const secret = newSecret();
    this.byHash.set(secretHash(secret), { mac, binding, expires: this.now() + (this.o.ttlMs ?? CREDENTIAL_DEFAULTS.ttlMs) });
    return secret;
  }

  /** What a presented credential is good for as a Hello of machine `mac`: its binding, or why not. Changes nothing. */
  check(presented: string, mac: string): { binding: Binding } | { refused: string } {
    const c = this.byHash.get(secretHash(presented));
    if (c === undefined) return { refused: 'the boot credential is unknown or was used already (each is good for one first Hello): boot the machine through the server again' };
    if (c.expires <= this.now()) return { refused: 'the boot credential has expired: boot the machine through the server again' };
    if (c.mac !== mac) return { refused: `the boot credential was issued for another machine, not ${mac}` };
    return { binding: c.binding };
  }

  /** Uses a credential up: it and every other one outstanding for its machine are gone. */
  consume(presented: string): void {
    const c = this.byHash.get(secretHash(presented));
    if (c === undefined) return;
    for (const [h, x] of [...this.byHash.entries()]) if (x.mac === c.mac) this.byHash.delete(h);
  }

  /** Credentials outstanding now. */
  get size(): number {
    this.prune();
    return this.byHash.size;
  }

  private prune(): void {
    const now = this.now();
    for (const [h, c] of [...this.byHash.entries()]) if (c.expires <= now) this.byHash.delete(h);
  }
}
