/** `clonecast image rm NAME[@V]`: remove a version, or every version of an image. */
import { parseRef } from '../../server/store/store.js';
import { COMMON, type Command } from '../command.js';

/** clonecast image rm */
export const imageRm: Command = {
  name: 'image rm',
  summary: 'Remove one version (NAME@V) or every version of an image (NAME).',
  usage: 'NAME[@V]',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    'dry-run': { kind: 'flag', help: 'Print which versions would be removed and remove nothing.' },
    ...COMMON,
  },
  details: ['The chunks are freed by "clonecast image gc" once no version uses them.'],
  interrupted: 'versions removed so far stay removed, the others are whole; run the rm again to finish',
  async run(ctx) {
    const { removeImage } = await import('../../server/store/maintenance.js');
    const r = removeImage(ctx.store(), parseRef(ctx.positionals[0]), { dryRun: ctx.flag('dry-run') });
    const names = r.removed.map((v) => `${r.name}@${v}`).join(', ');
    ctx.out(() => console.log(r.dryRun ? `would remove ${names}; nothing was removed` : `removed ${names}; run "clonecast image gc" to free chunks no version uses`), r);
    return 0;
  },
};
