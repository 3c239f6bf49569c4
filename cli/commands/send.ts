/** `clonecast send NAME[@V]`: one multicast session from the command line (lab and trials). */
import { COMMON, type Command } from '../command.js';
import { emitJson } from '../output.js';

/** clonecast send */
export const send: Command = {
  name: 'send',
  summary: 'Multicast one image version to "clonecast receive" on other machines, without a server (lab and trials).',
  usage: 'NAME[@V] (--interface IF | --address IP)',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    interface: { kind: 'string', value: 'IF', help: 'Send from this network interface.' },
    address: { kind: 'string', value: 'IP', help: 'Send from this local address.' },
    clients: { kind: 'positive', value: 'N', help: 'Start once N receivers have joined, and exit when they have all finished (without it, send runs until Ctrl-C).' },
    wait: { kind: 'positive', value: 'S', help: 'With --clients: start after S seconds even if fewer have joined.' },
    rate: { kind: 'positive', value: 'MBIT', help: 'Target rate in Mbit/s (the sender backs off on loss).' },
    group: { kind: 'string', value: 'ADDR', help: 'The multicast group address.' },
    port: { kind: 'port', value: 'P', help: 'The multicast data port.' },
    'http-port': { kind: 'port', value: 'P', help: 'The port receivers fetch the session and manifest from (0: any free port).' },
    fragment: { kind: 'positive', value: 'BYTES', help: 'Payload bytes per packet.' },
    'drop-after': { kind: 'positive', value: 'S', help: 'Drop a receiver that has made no progress for S seconds.' },
    encrypt: { kind: 'flag', help: 'Encrypt the image on the wire (AES-256-GCM per chunk), for images that hold secrets.' },
    'key-file': { kind: 'string', value: 'PATH', help: 'Write the session key here (default: a file in the data folder, removed at the end); receivers need a copy.' },
    ...COMMON,
  },
  interrupted: 'the session stops; receivers that had not finished keep their partial disks: run "clonecast receive --resume" against a new send',
  async run(ctx) {
    const { send: sendImage } = await import('../transfer.js');
    const { code, summary } = await sendImage(ctx.store(), {
      ref: ctx.positionals[0],
      address: ctx.str('address'),
      interface: ctx.str('interface'),
      clients: ctx.num('clients'),
      group: ctx.str('group'),
      port: ctx.num('port'),
      httpPort: ctx.num('http-port'),
      rateMbit: ctx.num('rate'),
      fragmentSize: ctx.num('fragment'),
      dropAfterSeconds: ctx.num('drop-after'),
      waitSeconds: ctx.num('wait'),
      keyFile: ctx.str('key-file'),
      encrypt: ctx.flag('encrypt'),
      json: ctx.json,
    });
    if (ctx.json) emitJson(summary);
    return code;
  },
};
