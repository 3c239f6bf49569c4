/** `clonecast image history NAME`: every version of an image. */
import { COMMON, type Command } from '../command.js';
import { printHistory } from '../output.js';

/** clonecast image history */
export const imageHistory: Command = {
  name: 'image history',
  summary: 'List every version of an image, oldest first: date, size, new bytes, unreadable ranges, source.',
  usage: 'NAME',
  positionals: [{ name: 'NAME' }],
  options: { ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const m = await import('../../server/store/maintenance.js');
    const history = await m.imageHistory(ctx.store(), ctx.positionals[0]);
    ctx.out(() => printHistory(history), history);
    return 0;
  },
};
