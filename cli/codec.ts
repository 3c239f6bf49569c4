/** --codec and --level: the commands that compress chunks (image import, capture). */
import { Compression, CODEC_NAMES, defaultCodec, type ChunkCodec } from '../protocol/chunk.js';
import { ZSTD } from '../protocol/zstd.js';
import type { OptionSpec } from './args.js';
import type { Context } from './command.js';

/** The options, for a command's options table. */
export const CODEC_OPTIONS: Record<string, OptionSpec> = {
  codec: { kind: 'string', value: 'lz4|zstd|raw', help: 'How new chunks are compressed (each chunk still falls back to raw when compression saves under 1/16 of it).', default: 'zstd where libzstd1 is installed, else lz4' },
  level: { kind: 'positive', value: 'N', help: `The zstd level, ${ZSTD.MIN_LEVEL} (fastest) to ${ZSTD.MAX_LEVEL} (smallest); "clonecast image recompress" can re-encode harder later.`, default: String(ZSTD.DEFAULT_LEVEL) },
};

/** The codec the options ask for; undefined means the default (defaultCodec()). */
export function codecFromOptions(ctx: Context): ChunkCodec | undefined {
  const name = ctx.str('codec');
  const level = ctx.num('level');
  if (level !== undefined && (level < ZSTD.MIN_LEVEL || level > ZSTD.MAX_LEVEL)) throw ctx.usage(`--level ${level} is not a zstd level from ${ZSTD.MIN_LEVEL} to ${ZSTD.MAX_LEVEL}`);
  if (name === undefined) {
    if (level === undefined) return undefined;
    const d = defaultCodec();
    if (d.compression !== Compression.ZSTD) throw ctx.usage('--level sets a zstd level, but zstd is not available here (install libzstd1), so the default codec is lz4');
    return { compression: Compression.ZSTD, level };
  }
  const entry = Object.entries(CODEC_NAMES).find(([, n]) => n === name);
  if (entry === undefined) throw ctx.usage(`--codec ${name} is not one of lz4, zstd, raw`);
  const compression = Number(entry[0]) as Compression;
  if (level !== undefined && compression !== Compression.ZSTD) throw ctx.usage(`--level applies to --codec zstd only, not ${name}`);
  return compression === Compression.ZSTD ? { compression, level: level ?? ZSTD.DEFAULT_LEVEL } : { compression };
}
