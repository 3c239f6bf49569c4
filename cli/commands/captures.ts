/** `clonecast captures` and `clonecast captures fail ID`. */
import { COMMON, SERVER, type Command } from '../command.js';
import { api, type CaptureView } from '../api.js';
import { safeText } from '../output.js';

/** clonecast captures */
export const captures: Command = {
  name: 'captures',
  summary: 'List the server\'s captures: id, machine, image, state, progress, error.',
  usage: '',
  positionals: [],
  options: { ...SERVER, ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const cs = await api<CaptureView[]>(ctx.client(), 'GET', '/api/captures');
    const { printCaptures } = await import('../admin.js');
    ctx.out(() => printCaptures(cs), cs);
    return 0;
  },
};

/** clonecast captures fail ID */
export const capturesFail: Command = {
  name: 'captures fail',
  summary: 'Stop a running capture and mark it failed (nothing is published; its stored chunks are reused or freed by gc).',
  usage: 'ID',
  positionals: [{ name: 'ID' }],
  options: {
    reason: { kind: 'string', value: 'TEXT', help: 'Why, as the capture\'s error shows it.', default: 'stopped by an operator' },
    ...SERVER,
    ...COMMON,
  },
  interrupted: 'the capture was either marked failed or not; check with "clonecast captures"',
  async run(ctx) {
    const id = Number(ctx.positionals[0]);
    if (!Number.isSafeInteger(id) || id <= 0) throw ctx.usage(`a capture ID is a positive whole number; got "${ctx.positionals[0]}"`);
    const reason = ctx.str('reason') ?? 'stopped by an operator';
    const c = await api<CaptureView>(ctx.client(), 'POST', `/api/captures/${id}/fail`, { reason });
    ctx.out(() => console.log(`capture ${c.id}: ${safeText(c.state)}${c.error ? ` (${safeText(c.error)})` : ''}`), c);
    return 0;
  },
};
