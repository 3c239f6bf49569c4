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
    discard: { kind: 'flag', help: 'Trim (discard) the areas no filesystem uses on a disk (a new file has holes there anyway).' },
    'grow-last': { kind: 'flag', help: 'On a target larger than the image (a disk, or a file made with --size), grow the last partition and its filesystem to the end (ext2/3/4, NTFS, XFS, btrfs).' },
    size: { kind: 'positive', value: 'BYTES', help: 'Make a file target this large (at least the image\'s disk size); the GPT backup goes to its end.' },
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
    const summary = await exportImage(ctx.store(), parseRef(ref), dest, {
      force: ctx.flag('force'),
      workers: ctx.num('workers'),
      progress: ctx.progress,
      discard: ctx.flag('discard'),
      growLast: ctx.flag('grow-last'),
      size: ctx.num('size'),
      log: (level, message) => process.stderr.write(`${level === 'warn' ? 'warning: ' : ''}${message}\n`),
    });
    ctx.out(() => printExport(summary), summary);
    return 0;
  },
};
