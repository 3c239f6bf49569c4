/** Progress of a push or pull, in stored bytes (moved or found there), with rate and ETA (server/progress.ts). */
import type { Context } from './command.js';
import { Progress } from '../server/progress.js';
import type { RepoProgress } from '../server/repo/push.js';

/** A progress display fed with RepoProgress updates. */
export function repoProgress(ctx: Context, label: string): { update: (p: RepoProgress) => void; end: () => void } {
  let bar: Progress | undefined;
  let seen = 0;
  return {
    update(p) {
      bar ??= new Progress(label, p.totalBytes, { stream: ctx.progress.stream });
      bar.add(p.bytes - seen);
      seen = p.bytes;
    },
    end() {
      bar?.finish();
    },
  };
}
