/** `clonecast image export NAME[@V] DEST`: write a version to a file or a disk. */
import { parseRef } from '../../server/store/store.js';
import { COMMON, WORKERS, type Command } from '../command.js';
import { printExport } from '../output.js';

/** clonecast image export */
export const imageExport: Command = {
  name: 'image export',
  summary: 'Write one version to a raw file (sparse) or a block device, checking every chunk first.',
  usage: 'NAME[@V] DEST',
  positionals: [{ name: 'NAME[@V]' }, { name: 'DEST' }],
  options: {
    force: {
      kind: 'flag',
      help: 'Overwrite what DEST holds: a non-empty file, or a disk with a partition table; on a disk it also overrides the refusal to write one that is mounted, in use or the running system\'s.',
    },
    ...WORKERS,
    ...COMMON,
  },
  details: [
    'Without --force, export refuses (exit 6) to replace a non-empty file or a disk whose first sectors hold an MBR or GPT, and to write a disk that is mounted, in use or holds the running system (that refusal is checked first, so the graver reason is the one shown).',
  ],
  interrupted: (ctx) => `${ctx.positionals[1] ?? 'DEST'} is incomplete: run the export again`,
  async run(ctx) {
    const [ref, dest] = ctx.positionals;
    const { exportImage } = await import('../../server/store/export.js');
    const summary = await exportImage(ctx.store(), parseRef(ref), dest, { force: ctx.flag('force'), workers: ctx.num('workers'), progress: ctx.progress });
    ctx.out(() => printExport(summary), summary);
    return 0;
  },
};
