/** `clonecast version` */
import { COMMON, version, type Command } from '../command.js';

/** clonecast version */
export const versionCommand: Command = {
  name: 'version',
  summary: 'Print clonecast\'s version.',
  usage: '',
  positionals: [],
  options: { ...COMMON },
  interrupted: 'nothing to undo',
  async run(ctx) {
    const v = version();
    ctx.out(() => console.log(`clonecast ${v}`), { version: v });
    return 0;
  },
};
