/** `clonecast image import SRC NAME`: a disk or disk file becomes a new image version. */
import { COMMON, WORKERS, type Command } from '../command.js';
import { printImport } from '../output.js';
import { CODEC_OPTIONS, codecFromOptions } from '../codec.js';

/** clonecast image import */
export const imageImport: Command = {
  name: 'image import',
  summary: 'Store a raw image, a block device or a qcow2/vmdk/vhdx/vdi file as a new version of image NAME.',
  usage: 'SRC NAME',
  positionals: [{ name: 'SRC' }, { name: 'NAME' }],
  options: {
    raw: { kind: 'flag', help: 'Read every byte of the disk, not only the blocks its filesystems use.' },
    'ignore-read-errors': { kind: 'flag', help: 'Store unreadable ranges as zeros and list them in the version, instead of failing.' },
    'chunk-size': { kind: 'positive', value: 'BYTES', help: 'Chunk size: a power of two from 65536 (64 KiB) to 16777216 (16 MiB).', default: '1048576 (1 MiB)' },
    'allow-backing-outside': { kind: 'flag', help: 'Follow a virtual disk\'s backing files even outside its folder (refused by default: a file can name any path as its backing file).' },
    ...CODEC_OPTIONS,
    ...WORKERS,
    ...COMMON,
  },
  details: [
    'Only what the filesystems use is read (partclone maps of ext2/3/4, NTFS, FAT, exFAT, XFS, btrfs, f2fs, HFS+); swap is not copied; other and unclean filesystems are read in full, with a warning; --raw reads every byte.',
    'Chunks the store already holds are not stored twice.',
    'qcow2, vmdk, vhdx, vdi and vpc (VHD) files are recognised by their header and read through qemu-nbd --read-only with their backing chain (Debian qemu-utils); ranges it reports as zero are not read, the rest is read whole (no used-block maps).',
  ],
  interrupted: 'nothing half-made was published; chunks already stored are reused by the next import (or dropped by "clonecast image gc")',
  async run(ctx) {
    const [src, name] = ctx.positionals;
    const { importAny } = await import('../../server/store/import-virtual.js');
    const summary = await importAny(ctx.store(), src, name, {
      allowBackingOutside: ctx.flag('allow-backing-outside'),
      ignoreReadErrors: ctx.flag('ignore-read-errors'),
      chunkSize: ctx.num('chunk-size'),
      workers: ctx.num('workers'),
      codec: codecFromOptions(ctx),
      progress: ctx.progress,
      raw: ctx.flag('raw'),
      warn: (message) => process.stderr.write(`warning: ${message}\n`),
    });
    ctx.out(() => printImport(summary), summary);
    return 0;
  },
};
