/** `clonecast image prune NAME`: remove versions a retention rule does not keep. */
import { COMMON, type Command } from '../command.js';

/** clonecast image prune */
export const imagePrune: Command = {
  name: 'image prune',
  summary: 'Remove the versions of an image that --keep-last and --keep-daily do not keep.',
  usage: 'NAME',
  positionals: [{ name: 'NAME' }],
  options: {
    'keep-last': { kind: 'positive', value: 'K', help: 'Keep the K newest versions.' },
    'keep-daily': { kind: 'positive', value: 'D', help: 'Keep the newest version of each of the last D days (UTC); the newest version is always kept.' },
    'dry-run': { kind: 'flag', help: 'Print which versions would be removed and remove nothing.' },
    ...COMMON,
  },
  details: ['The chunks only removed versions used are freed by "clonecast image gc".'],
  interrupted: 'versions removed so far stay removed, the others are whole; run the prune again to finish',
  async run(ctx) {
    const [name] = ctx.positionals;
    const dry = ctx.flag('dry-run');
    const { pruneImage } = await import('../../server/store/maintenance.js');
    const r = await pruneImage(ctx.store(), name, { keepLast: ctx.num('keep-last'), keepDaily: ctx.num('keep-daily') }, dry);
    ctx.out(
      () =>
        console.log(
          `${dry ? 'would remove' : 'removed'} ${r.removed.length ? r.removed.map((v) => `${name}@${v}`).join(', ') : 'nothing'}; kept ${r.kept.map((v) => `@${v}`).join(', ')}${r.removed.length && !dry ? '; "clonecast image gc" frees the chunks only they used' : ''}`,
        ),
      { ...r, dryRun: dry },
    );
    return 0;
  },
};
