/** `clonecast image recompress NAME[@V]`: re-encode a version's chunks with zstd at a higher level. */
import { parseRef } from '../../server/store/store.js';
import { ZSTD } from '../../protocol/zstd.js';
import { COMMON, WORKERS, type Command } from '../command.js';
import { printRecompress } from '../output.js';

/** clonecast image recompress */
export const imageRecompress: Command = {
  name: 'image recompress',
  summary: 'Re-encode the chunks of one version with zstd at a higher level, so that every later deploy sends less.',
  usage: 'NAME[@V]',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    level: { kind: 'positive', value: 'N', help: `The zstd level, ${ZSTD.MIN_LEVEL} to ${ZSTD.MAX_LEVEL}.`, default: String(ZSTD.RECOMPRESS_LEVEL) },
    ...WORKERS,
    ...COMMON,
  },
  details: [
    'A chunk is replaced only if the new form is smaller; its name (the SHA-256 of its bytes) stays, so every image that shares it gains, and every manifest naming it is updated.',
    'It holds the store like "clonecast image gc" does: imports, captures, exports and verifies wait for it. Let running deploys of these chunks finish first.',
  ],
  interrupted: 'chunks already recompressed stay recompressed and readable; run the same command again to finish and to update the versions that name them',
  async run(ctx) {
    const { recompressImage } = await import('../../server/store/recompress.js');
    const summary = await recompressImage(ctx.store(), parseRef(ctx.positionals[0]), { level: ctx.num('level'), workers: ctx.num('workers'), progress: ctx.progress });
    ctx.out(() => printRecompress(summary), summary);
    return 0;
  },
};
