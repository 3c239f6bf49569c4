/**
 * Machine names: what the registry accepts, and the NetBIOS computer name
 * Windows gets for one (Microsoft: computer names are at most 15
 * characters; '.' and '_' are not valid in them or in DNS host names,
 * RFC 1123 section 2.1, so they become '-').
 */

/** The longest NetBIOS computer name Windows takes. */
export const NETBIOS_MAX = 15;

/** A machine name as the registry keeps it: 1-64 letters, digits, '.', '_' or '-'. */
export const MACHINE_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** The NetBIOS computer name for a registry name: letters, digits and '-', at most 15 characters, upper case. */
export function netbiosName(name: string): string {
  return name.replace(/[._]/g, '-').slice(0, NETBIOS_MAX).toUpperCase();
}

/** Groups of names that give the same NetBIOS name (only groups of two or more), for a warning. */
export function netbiosCollisions(names: string[]): string[][] {
  const by = new Map<string, string[]>();
  for (const n of new Set(names)) {
    const k = netbiosName(n);
    by.set(k, [...(by.get(k) ?? []), n]);
  }
  return [...by.values()].filter((g) => g.length > 1);
}
