/**
 * The finishing options of a deploy request (--discard, --grow-last), checked
 * where a session is made; the agent does the work (agent/after-write.ts).
 */
import { ClonecastError, ERR } from '../protocol/errors.js';

/** Refuses a request whose discard or growLast is not a boolean. */
export function checkFinishOptions(req: { discard?: unknown; growLast?: unknown }): void {
  if (req.discard !== undefined && typeof req.discard !== 'boolean') throw new ClonecastError(ERR.USAGE, 'discard must be true or false');
  if (req.growLast !== undefined && typeof req.growLast !== 'boolean') throw new ClonecastError(ERR.USAGE, 'growLast must be true or false');
}
