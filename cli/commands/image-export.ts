/** `clonecast image export NAME[@V] DEST`: write a version to a file or a disk, raw or in a virtual format. */
import { parseRef } from '../../server/store/store.js';
import { VIRTUAL_FORMATS, type VirtualFormat } from '../../native/qemu-img.js';
import { COMMON, WORKERS, type Command } from '../command.js';
import { printExport } from '../output.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';

/** clonecast image export */
export const imageExport: Command = {
  name: 'image export',
  summary: 'Write one version to a raw file (sparse), a block device, or a qcow2/vmdk/vhdx/vdi/vpc file, checking every chunk first.',
  usage: 'NAME[@V] DEST [--format qcow2|vmdk|vhdx|vdi|vpc|raw] [--compress] [--backing NAME@U=FILE[:FMT]]',
  positionals: [{ name: 'NAME[@V]' }, { name: 'DEST' }],
  options: {
    force: {
      kind: 'flag',
      help: 'Overwrite what DEST holds: a non-empty file, or a disk with a partition table; on a disk it also overrides the refusal to write one that is mounted, in use or the running system\'s.',
    },
    discard: { kind: 'flag', help: 'Trim (discard) the areas no filesystem uses on a disk (a new file has holes there anyway).' },
    'grow-last': { kind: 'flag', help: 'On a target larger than the image (a disk, or a file made with --size), grow the last partition and its filesystem to the end (ext2/3/4, NTFS, XFS, btrfs).' },
    size: { kind: 'positive', value: 'BYTES', help: 'Make a file target this large (at least the image\'s disk size); the GPT backup goes to its end.' },
    format: { kind: 'string', value: 'FMT', help: 'The format: qcow2, vmdk, vhdx, vdi, vpc (VHD) or raw; the virtual formats are written by qemu-img (Debian qemu-utils).', default: 'from DEST\'s extension (.qcow2 .vmdk .vhdx .vdi .vhd), else raw' },
    compress: { kind: 'flag', help: 'Compress the clusters (qcow2 and vmdk only).' },
    backing: { kind: 'string', value: 'NAME@U=FILE[:FMT]', help: 'Write a qcow2 overlay on FILE, an earlier export of NAME@U in format FMT (raw, qcow2, ...; without it, what qemu-img sees): it holds only the chunks that differ between U and this version. FILE must read, in that format, as exactly NAME@U and name no other file.' },
    ...WORKERS,
    ...COMMON,
  },
  details: [
    'Virtual formats: qemu-img convert reads the version through a private NBD export on a Unix socket; zero and absent chunks stay holes.',
    'Without --force, export refuses (exit 6) to replace a non-empty file or a disk whose first sectors hold an MBR or GPT, and to write a disk that is mounted, in use or holds the running system (that refusal is checked first, so the graver reason is the one shown).',
  ],
  interrupted: (ctx) => `${ctx.positionals[1] ?? 'DEST'} is incomplete: run the export again`,
  async run(ctx) {
    const [ref, dest] = ctx.positionals;
    const format = exportFormat(ctx.str('format'), dest);
    const backingOpt = ctx.str('backing');
    if (format === 'raw' && backingOpt === undefined) {
      if (ctx.flag('compress')) throw ctx.usage('--compress needs --format qcow2 or vmdk');
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
    }
    for (const o of ['discard', 'grow-last', 'size'] as const) {
      if (ctx.values[o] !== undefined) throw ctx.usage(`--${o} applies to raw files and disks, not to --format ${format}${backingOpt !== undefined ? ' or --backing' : ''}: export raw, or resize the virtual disk with qemu-img resize`);
    }
    let backing: { ref: ReturnType<typeof parseRef>; file: string; format?: VirtualFormat } | undefined;
    if (backingOpt !== undefined) {
      const eq = backingOpt.indexOf('=');
      if (eq <= 0 || eq === backingOpt.length - 1) throw ctx.usage(`--backing ${backingOpt}: write NAME@U=FILE, e.g. --backing pc@1=pc-1.qcow2`);
      let file = backingOpt.slice(eq + 1);
      const colon = file.lastIndexOf(':');
      const fmt = colon > 0 ? file.slice(colon + 1) : '';
      const known = (VIRTUAL_FORMATS as readonly string[]).includes(fmt) || fmt === 'raw';
      if (known) file = file.slice(0, colon);
      backing = { ref: parseRef(backingOpt.slice(0, eq)), file, format: known ? (fmt as VirtualFormat) : undefined };
    }
    const { exportVirtual } = await import('../../server/store/export-virtual.js');
    const s = await exportVirtual(ctx.store(), parseRef(ref), dest, { format, compress: ctx.flag('compress'), backing, force: ctx.flag('force') });
    ctx.out(() => {
      console.log(`exported ${s.name}@${s.version} to ${s.target} (${s.format}${s.backing !== null ? `, overlay on ${s.backing}` : ''})`);
      console.log(`  ${s.diskSize} bytes virtual, ${s.fileBytes} bytes on disk, ${s.bytesDecoded ?? 0} bytes of chunks decoded, ${s.seconds.toFixed(2)} s`);
    }, s);
    return 0;
  },
};

/** The format asked for, or the one DEST's extension names, else raw. */
function exportFormat(asked: string | undefined, dest: string): VirtualFormat {
  if (asked !== undefined) {
    if (!(VIRTUAL_FORMATS as readonly string[]).includes(asked)) throw new ClonecastError(ERR.USAGE, `--format ${asked}: choose one of ${VIRTUAL_FORMATS.join(', ')} (vpc is VHD)`);
    return asked as VirtualFormat;
  }
  const ext = /\.([a-z0-9]+)$/i.exec(dest)?.[1]?.toLowerCase();
  if (ext === 'vhd') return 'vpc';
  return ext !== undefined && (VIRTUAL_FORMATS as readonly string[]).includes(ext) ? (ext as VirtualFormat) : 'raw';
}
