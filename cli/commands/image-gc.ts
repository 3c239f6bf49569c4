/** `clonecast image gc`: free the chunks no version uses. */
import { COMMON, type Command } from '../command.js';
import { printGc } from '../output.js';

/** clonecast image gc */
export const imageGc: Command = {
  name: 'image gc',
  summary: 'Remove the chunks no version uses and the temporary files of processes that are gone.',
  usage: '',
  positionals: [],
  options: {
    'dry-run': { kind: 'flag', help: 'Count what would be removed (chunks, bytes, temporary files) and remove nothing.' },
    ...COMMON,
  },
  details: ['It refuses to run while an import, export or server holds the store, or if any version cannot be read.'],
  interrupted: 'chunks removed so far stay removed; every version is still whole; run gc again to finish',
  async run(ctx) {
    const { collectGarbage } = await import('../../server/store/maintenance.js');
    const report = await collectGarbage(ctx.store(), { dryRun: ctx.flag('dry-run') });
    ctx.out(() => printGc(report), report);
    return 0;
  },
};
