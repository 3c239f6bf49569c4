/** `clonecast fingerprint` and `clonecast tls renew`: the server's TLS certificate, which clients pin by its fingerprint. */
import { COMMON, type Command } from '../command.js';

/** clonecast fingerprint */
export const fingerprint: Command = {
  name: 'fingerprint',
  summary: 'Print the SHA-256 fingerprint of the server\'s certificate (clients pin it), creating the certificate if there is none.',
  usage: '',
  positionals: [],
  options: { ...COMMON },
  details: [
    'Run it on the server. Admin commands and agents on other hosts need it: --fingerprint SHA256 or CLONECAST_FINGERPRINT.',
    'On the server itself they read it from the data directory. The certificate is in DATA/tls (cert.pem; key.pem, mode 0600).',
  ],
  interrupted: 'the certificate folder is either whole or absent',
  async run(ctx) {
    const { loadOrCreateCert } = await import('../../server/tls.js');
    const c = await loadOrCreateCert(ctx.store().root);
    ctx.out(() => console.log(c.fingerprint), { fingerprint: c.fingerprint, dir: c.dir, created: c.created, names: c.names });
    return 0;
  },
};

/** clonecast tls renew */
export const tlsRenew: Command = {
  name: 'tls renew',
  summary: 'Make a new certificate for the server (a new fingerprint that every client must then be given).',
  usage: '',
  positionals: [],
  options: {
    name: { kind: 'string', value: 'NAME,...', help: 'More host names or addresses for the certificate (this host\'s name and addresses are always in it).' },
    ...COMMON,
  },
  details: [
    'The old certificate is kept as DATA/tls.old. A running server uses the new one from its next start;',
    'agents and admin commands then need the new fingerprint (network-booted agents get it from the boot script).',
  ],
  interrupted: 'the certificate folder is either the old one or the new one, whole',
  async run(ctx) {
    const { renewCert } = await import('../../server/tls.js');
    const { list } = await import('../args.js');
    const c = await renewCert(ctx.store().root, list(ctx.str('name')) ?? []);
    ctx.out(
      () => console.log(`${c.fingerprint}\nnew certificate in ${c.dir} for ${c.names.join(', ')}; restart "clonecast serve" and give clients the new fingerprint`),
      { fingerprint: c.fingerprint, dir: c.dir, names: c.names },
    );
    return 0;
  },
};
