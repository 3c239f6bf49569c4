/** `clonecast image assemble NEW --part SRC[@V]:N ...`: a new disk made of stored partitions (P2V). */
import { COMMON, type Command } from '../command.js';
import { CODEC_OPTIONS, codecFromOptions } from '../codec.js';
import { safeText } from '../output.js';
import { typeName } from '../../protocol/partitions.js';
import { formatBytes, formatDuration } from '../../server/progress.js';
import type { AssembleSummary } from '../../server/store/assemble.js';

const log = (s = '') => process.stdout.write(s + '\n');

/** Prints what an assembly did. */
function printAssemble(s: AssembleSummary): void {
  log(`assembled ${s.name}@${s.version}${s.parent !== null ? ` (parent ${s.name}@${s.parent})` : ''}`);
  log(`  disk        ${formatBytes(s.diskSize)} (${s.diskSize} bytes), ${s.table.scheme}, disk id ${s.table.diskId}`);
  s.table.partitions.forEach((p, i) => {
    const from = s.assembledFrom[i];
    log(`    ${String(p.number).padStart(2)}  start ${formatBytes(p.start).padStart(10)}  size ${formatBytes(p.size).padStart(10)}  ${typeName(p.type)}${p.name ? `  "${safeText(p.name)}"` : ''}  from ${from.image}@${from.version} partition ${from.partition}${p.uuid ? `  partuuid ${p.uuid}` : ''}`);
  });
  log(`  chunks      ${s.chunks}: ${s.reusedChunks} reused from the sources as they are, ${s.builtChunks} built (${formatBytes(s.bytesRead)} of source data read)`);
  log(`  stored      new in the store: ${formatBytes(s.newBytes)} in ${s.newChunks} chunks (${s.codec})`);
  log(`  time        ${formatDuration(s.seconds)}`);
}

/** clonecast image assemble */
export const imageAssemble: Command = {
  name: 'image assemble',
  summary: 'Make a new version of image NEW from partitions of stored versions, under a new partition table (P2V).',
  usage: 'NEW --part IMAGE[@V]:N [--part IMAGE[@V]:N ...]',
  positionals: [{ name: 'NEW' }],
  options: {
    part: { kind: 'string', value: 'IMAGE[@V]:N', repeatable: true, help: 'A partition to copy: partition N of IMAGE@V as "clonecast image info" lists it; give --part once per partition, in the order the new disk holds them.' },
    table: { kind: 'string', value: 'gpt|mbr', help: 'The new partition table.', default: 'gpt' },
    size: { kind: 'string', value: 'auto|BYTES', help: 'The disk size: auto (just past the last partition and the backup GPT) or a number of bytes at least that large.', default: 'auto' },
    'grow-last': { kind: 'flag', help: 'Make the last partition fill the disk --size gives (its filesystem is not resized: do that after restoring).' },
    ...CODEC_OPTIONS,
    ...COMMON,
  },
  details: [
    'The new table has a fresh disk GUID (or MBR signature) and fresh partition GUIDs; type GUIDs, names and attributes are kept, MBR types become the matching GPT types and back. Partitions start on 1 MiB boundaries.',
    'Each partition\'s bytes are copied exactly. Chunks of partitions that start on a chunk boundary in their source are reused as they are: only the new table and partial chunks are stored.',
  ],
  interrupted: 'nothing was published; chunks already stored are dropped by "clonecast image gc" or reused later',
  async run(ctx) {
    const [name] = ctx.positionals;
    const parts = ctx.strs('part');
    if (parts.length === 0) throw ctx.usage('name the partitions to copy with --part IMAGE[@V]:N (once per partition)');
    const table = ctx.str('table') ?? 'gpt';
    if (table !== 'gpt' && table !== 'mbr') throw ctx.usage(`--table takes gpt or mbr, got "${table}"`);
    const sizeText = ctx.str('size') ?? 'auto';
    let size: number | undefined;
    if (sizeText !== 'auto') {
      size = /^[1-9][0-9]{0,17}$/.test(sizeText) ? Number(sizeText) : NaN;
      if (!Number.isSafeInteger(size)) throw ctx.usage(`--size takes auto or a number of bytes, got "${sizeText}"`);
    }
    const { assembleImage } = await import('../../server/store/assemble.js');
    const { parsePartSpec } = await import('../../server/store/assemble-plan.js');
    const summary = await assembleImage(ctx.store(), name, parts.map(parsePartSpec), { table, size, growLast: ctx.flag('grow-last'), codec: codecFromOptions(ctx), progress: ctx.progress });
    ctx.out(() => printAssemble(summary), summary);
    return 0;
  },
};
