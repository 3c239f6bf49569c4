/**
 * The Secure Boot step of `bootenv build`: collects Debian's signed shim and
 * GRUB and checks the kernel's and the modules' signatures
 * (pxe/secureboot.ts), without failing the build when the archive cannot be
 * reached: the iPXE path does not need them, and serve --secure-boot says
 * what is missing.
 */
import { collectSecureBoot, type SecureBootFiles } from './secureboot.js';

/** What the build collected, or why not. */
export type SecureBootResult = ({ ok: true } & SecureBootFiles) | { ok: false; error: string };

/** collectSecureBoot(), its failure turned into a result and a log line. */
export function secureBootFiles(o: Parameters<typeof collectSecureBoot>[0]): SecureBootResult {
  try {
    const files = collectSecureBoot(o);
    o.log?.(`Secure Boot: shim signed by ${files.signers.shim.slice(0, 2).join(', ') || '?'}; GRUB by ${files.signers.grub.join(', ') || '?'}; kernel by ${files.signers.kernel.join(', ') || '?'}; ${files.modulesChecked} modules signed`);
    return { ok: true, ...files };
  } catch (err) {
    o.log?.(`Secure Boot files not collected: ${(err as Error).message}`);
    return { ok: false, error: (err as Error).message };
  }
}
