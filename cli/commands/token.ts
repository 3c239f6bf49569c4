/** `clonecast token`: the server's token, made on first use. */
import { COMMON, type Command } from '../command.js';

/** clonecast token */
export const token: Command = {
  name: 'token',
  summary: 'Print the server\'s token (agents and admin commands need it), creating it if there is none.',
  usage: '',
  positionals: [],
  options: { ...COMMON },
  details: ['The token is kept in the data directory, mode 0600; hand it to agents through CLONECAST_TOKEN or a token file.'],
  interrupted: 'the token file is either whole or absent',
  async run(ctx) {
    const { loadOrCreateToken } = await import('../../server/token.js');
    const t = loadOrCreateToken(ctx.store().root);
    ctx.out(() => console.log(t.token), { token: t.token, path: t.path, created: t.created });
    return 0;
  },
};
