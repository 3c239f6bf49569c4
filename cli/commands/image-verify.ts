/** `clonecast image verify [NAME[@V]]`: re-read and check every chunk. */
import { parseRef } from '../../server/store/store.js';
import { COMMON, WORKERS, type Command } from '../command.js';
import { printVerify } from '../output.js';

/** clonecast image verify */
export const imageVerify: Command = {
  name: 'image verify',
  summary: 'Check every chunk of the store, or of one image or version, against its SHA-256 (exit 4 on damage).',
  usage: '[NAME[@V]]',
  positionals: [{ name: 'NAME[@V]', optional: true }],
  options: { ...WORKERS, ...COMMON },
  interrupted: 'nothing changed (it only reads); run it again to check everything',
  async run(ctx) {
    const { verifyStore } = await import('../../server/store/maintenance.js');
    const ref = ctx.positionals[0];
    const report = await verifyStore(ctx.store(), ref === undefined ? undefined : parseRef(ref), { workers: ctx.num('workers'), progress: ctx.progress });
    ctx.out(() => printVerify(report), report);
    return report.ok ? 0 : 4;
  },
};
