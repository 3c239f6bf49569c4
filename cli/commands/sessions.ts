/** `clonecast sessions`, `sessions start ID`, `sessions cancel ID`. */
import { COMMON, SERVER, type Command, type Context } from '../command.js';
import { api, type SessionView } from '../api.js';
import { safeText } from '../output.js';

/** clonecast sessions */
export const sessions: Command = {
  name: 'sessions',
  summary: 'List the server\'s sessions: image, state, machines done, created, detail.',
  usage: '',
  positionals: [],
  options: { ...SERVER, ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const ss = await api<SessionView[]>(ctx.client(), 'GET', '/api/sessions');
    const { printSessions } = await import('../admin.js');
    ctx.out(() => printSessions(ss), ss);
    return 0;
  },
};

async function act(ctx: Context, action: 'start' | 'cancel'): Promise<number> {
  const id = Number(ctx.positionals[0]);
  if (!Number.isSafeInteger(id) || id <= 0) throw ctx.usage(`a session ID is a positive whole number; got "${ctx.positionals[0]}"`);
  const s = await api<SessionView>(ctx.client(), 'POST', `/api/sessions/${id}/${action}`);
  ctx.out(() => console.log(`session ${s.id}: ${s.state}${s.reason ? ` (${safeText(s.reason)})` : ''}`), s);
  return 0;
}

/** clonecast sessions start ID */
export const sessionsStart: Command = {
  name: 'sessions start',
  summary: 'Start a waiting session now, with the machines that have joined, whatever its start rule says.',
  usage: 'ID',
  positionals: [{ name: 'ID' }],
  options: { ...SERVER, ...COMMON },
  interrupted: 'the session was either started or not; check with "clonecast sessions"',
  run: (ctx) => act(ctx, 'start'),
};

/** clonecast sessions cancel ID */
export const sessionsCancel: Command = {
  name: 'sessions cancel',
  summary: 'Cancel a session; its machines stop receiving and their disks are incomplete.',
  usage: 'ID',
  positionals: [{ name: 'ID' }],
  options: { ...SERVER, ...COMMON },
  interrupted: 'the session was either cancelled or not; check with "clonecast sessions"',
  run: (ctx) => act(ctx, 'cancel'),
};
