/** `clonecast capture MACHINE NAME`: a running agent's disk becomes a new image version. */
import { COMMON, SERVER, type Command } from '../command.js';
import { emitJson } from '../output.js';

/** clonecast capture */
export const capture: Command = {
  name: 'capture',
  summary: 'Capture the disk of a machine whose agent is connected into a new version of image NAME, and follow it.',
  usage: 'MACHINE NAME',
  positionals: [{ name: 'MACHINE' }, { name: 'NAME' }],
  options: {
    disk: { kind: 'string', value: 'DEV', help: 'The disk to read on the machine.', default: 'its only disk' },
    raw: { kind: 'flag', help: 'Read every byte of the disk, not only the blocks its filesystems use.' },
    partitions: { kind: 'string', value: 'N,...', help: 'Read only these partitions, by number (P2V of chosen partitions).' },
    'ignore-read-errors': { kind: 'flag', help: 'Store unreadable ranges as zeros and list them in the version, instead of failing.' },
    force: { kind: 'flag', help: 'Read the disk even if it is mounted (the copy may then be inconsistent).' },
    ...SERVER,
    ...COMMON,
  },
  details: ['MACHINE is its MAC address (the id "clonecast machines" shows).'],
  interrupted: 'if the server had started the capture, it keeps running on the machine; see it with "clonecast captures" or stop it with "clonecast captures fail ID"',
  async run(ctx) {
    const [machine, image] = ctx.positionals;
    const partitions = ctx.str('partitions')?.split(',').map((p) => {
      const n = Number(p.trim());
      if (!Number.isSafeInteger(n) || n <= 0) throw ctx.usage(`--partitions takes partition numbers such as 1,3; got "${p}"`);
      return n;
    });
    const client = ctx.client();
    const a = await import('../admin.js');
    const r = await a.capture(
      client,
      { machine, image, disk: ctx.str('disk'), partitions, ignoreReadErrors: ctx.flag('ignore-read-errors'), force: ctx.flag('force'), raw: ctx.flag('raw') || undefined },
      {
        json: ctx.json,
        stream: process.stderr,
        started: (c) => ctx.setInterrupted(`capture ${c.id} keeps running on the machine; see it with "clonecast captures" or stop it with "clonecast captures fail ${c.id}"`),
      },
    );
    if (ctx.json) emitJson(r);
    return r.state === 'done' ? 0 : 1;
  },
};
