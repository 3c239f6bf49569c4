/**
 * Files the TFTP server makes on request rather than reads from its root
 * (the per-machine GRUB config of the Secure Boot path): each request's
 * content is written to its own file, mode 0600, in a private folder outside
 * the served root, served like any file, and removed when its transfer ends.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** What a generator says about a requested name: not ours (null), an error to send, or the content. */
export type Generated = null | { error: string } | { content: string | Buffer };

/** A served generated file: its path and what removes it. */
export interface GeneratedFile {
  path: string;
  done(): void;
}

/** The private folder of generated files; emptied when made (leftovers of a crash). */
export class GeneratedFiles {
  constructor(readonly dir: string) {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** Writes content to a new file of its own. */
  make(content: string | Buffer): GeneratedFile {
    const path = join(this.dir, randomBytes(12).toString('hex'));
    writeFileSync(path, content, { mode: 0o600 });
    return {
      path,
      done: () => {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      },
    };
  }

  /** How many are on disk now (tests). */
  count(): number {
    return readdirSync(this.dir).length;
  }
}
