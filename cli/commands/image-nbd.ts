/** `clonecast image nbd NAME[@V]`: serve one version read-only over NBD in the foreground. */
import { resolve } from 'node:path';
import { parseRef } from '../../server/store/store.js';
import { COMMON, type Command } from '../command.js';
import { nbdHowTo, type TcpExport } from '../../server/nbd/howto.js';

/** clonecast image nbd */
export const imageNbd: Command = {
  name: 'image nbd',
  summary: 'Serve one version as a read-only NBD export (Unix socket, or TCP with TLS) for qemu-img and qemu.',
  usage: 'NAME[@V] [--socket PATH] [--listen ADDR:PORT]',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    socket: { kind: 'string', value: 'PATH', help: 'Listen on this Unix socket (mode 0600).', default: './NAME@V.nbd.sock when --listen is not given' },
    listen: { kind: 'string', value: 'ADDR:PORT', help: 'Also listen on TCP; clients must use TLS-PSK (STARTTLS) with the key written to --psk-dir (see docs/virtual-disks.md).' },
    'psk-dir': { kind: 'string', value: 'DIR', help: 'With --listen: where to write keys.psk (a fresh random key; mode 0600) for qemu\'s tls-creds-psk.', default: './NAME@V.nbd-psk' },
    ...COMMON,
  },
  details: [
    'The export is read-only; chunks are checked against the manifest before they are sent. Zero and absent chunks are holes (base:allocation), so qemu-img skips them.',
    'The store cannot be garbage-collected while the export runs. Stop it with Ctrl-C.',
  ],
  interrupted: 'the export stopped; nothing was changed',
  async run(ctx) {
    const ref = parseRef(ctx.positionals[0]);
    const store = ctx.store();
    const { NbdServer } = await import('../../server/nbd/server.js');
    const srv = new NbdServer(store);
    const stop = new Promise<void>((done) => {
      ctx.onInterrupt(() => done());
      process.once('SIGTERM', () => done());
    });
    try {
      const e = await srv.add(ref);
      const listen = ctx.str('listen');
      const socket = ctx.str('socket') ?? (listen === undefined ? resolve(`${e.name}.nbd.sock`) : undefined);
      if (socket !== undefined) await srv.listenUnix(resolve(socket));
      let tcp: TcpExport | undefined;
      if (listen !== undefined) {
        const m = /^(.*):(\d{1,5})$/.exec(listen);
        if (m === null) throw ctx.usage(`--listen ${listen}: write ADDR:PORT, e.g. 0.0.0.0:10809`);
        const { newPsk, writePskDir } = await import('../../server/nbd/tls.js');
        const psk = newPsk();
        const pskDir = writePskDir(resolve(ctx.str('psk-dir') ?? `${e.name}.nbd-psk`), psk);
        const port = await srv.listenTls(m[1], Number(m[2]), psk.options);
        tcp = { host: m[1], port, pskDir, identity: psk.identity };
      }
      const howto = nbdHowTo(e.name, e.source.size, socket === undefined ? undefined : resolve(socket), tcp);
      ctx.out(() => console.log(howto.text), howto.data);
      await stop;
      return 0;
    } finally {
      await srv.close();
    }
  },
};
