/** `clonecast receive`: join a "clonecast send" session and write the disk. */
import { COMMON, type Command } from '../command.js';
import { emitJson } from '../output.js';

/** clonecast receive */
export const receive: Command = {
  name: 'receive',
  summary: 'Join a "clonecast send" session and write the image to a disk or file, checking every chunk.',
  usage: '--from URL --key-file PATH --disk PATH',
  positionals: [],
  options: {
    from: { kind: 'string', value: 'URL', help: 'The session URL "clonecast send" printed (required).' },
    'key-file': { kind: 'string', value: 'PATH', help: 'The session key file "clonecast send" wrote (required): without it no packet can be checked.' },
    disk: { kind: 'string', value: 'PATH', help: 'The disk or file to write (required).' },
    interface: { kind: 'string', value: 'IF', help: 'Receive on this network interface.' },
    address: { kind: 'string', value: 'IP', help: 'Receive on the interface with this local address.' },
    resume: { kind: 'flag', help: 'Keep the chunks the disk already holds (checked) and receive only the rest.' },
    force: { kind: 'flag', help: 'Write the disk even if it is mounted, in use or holds the running system.' },
    'no-verify': { kind: 'flag', help: 'Do not read chunks back after writing them (the disk is then not verified).' },
    'final-verify': { kind: 'flag', help: 'Also read the whole disk back once more at the end (each chunk is read back soon after its write anyway).' },
    'write-limit': { kind: 'positive', value: 'BYTES/S', help: 'Emulate a slow disk (tests and demos).' },
    ...COMMON,
  },
  interrupted: (ctx) => `${ctx.str('disk') ?? 'DISK'} is incomplete: run the receive again with --resume to fetch only what is missing`,
  async run(ctx) {
    const from = ctx.str('from');
    const disk = ctx.str('disk');
    const keyFile = ctx.str('key-file');
    if (from === undefined || disk === undefined || keyFile === undefined) throw ctx.usage('"clonecast receive" needs --from URL, --key-file PATH and --disk PATH');
    const { receive: receiveImage } = await import('../transfer.js');
    const summary = await receiveImage({
      from,
      disk,
      keyFile,
      address: ctx.str('address'),
      interface: ctx.str('interface'),
      resume: ctx.flag('resume'),
      force: ctx.flag('force'),
      verify: !ctx.flag('no-verify'),
      finalVerify: ctx.flag('final-verify'),
      writeLimit: ctx.num('write-limit'),
      json: ctx.json,
    });
    if (ctx.json) emitJson(summary);
    return 0;
  },
};
