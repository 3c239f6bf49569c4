/** `clonecast wake MAC...|--group NAME|--session ID`: Wake-on-LAN through the server. */
import { COMMON, SERVER, type Command } from '../command.js';
import { api } from '../api.js';
import { safeText } from '../output.js';
import { NAME_RE } from './deploy.js';

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** What POST /api/wake answers. */
interface WakeAnswer {
  macs: string[];
  broadcasts: string[];
  packets: number;
  unknown: string[];
}

/** clonecast wake */
export const wakeCommand: Command = {
  name: 'wake',
  summary: 'Wake machines with Wake-on-LAN magic packets sent by the server on the machines\' network.',
  usage: 'MAC... | --group NAME | --session ID',
  positionals: [{ name: 'MAC', optional: true, repeated: true }],
  options: {
    group: { kind: 'string', value: 'NAME', help: 'Wake every machine of this group.' },
    session: { kind: 'positive', value: 'ID', help: 'Wake the machines this session names (its --machines or --group).' },
    ...SERVER,
    ...COMMON,
  },
  details: [
    'The server sends each packet three times to the limited broadcast address on its --interface, and to its --wake-broadcast addresses.',
    'A machine wakes only if Wake-on-LAN is enabled in its firmware (and, for a machine that was shut down from Linux, with "ethtool -s IF wol g").',
    '"clonecast deploy --wake" wakes a session\'s machines as soon as the session exists.',
  ],
  interrupted: 'some packets may have been sent; sending them again does no harm',
  async run(ctx) {
    const macs = ctx.positionals.map((m) => m.toLowerCase().replace(/-/g, ':'));
    const group = ctx.str('group');
    const session = ctx.num('session');
    const given = [macs.length > 0, group !== undefined, session !== undefined].filter(Boolean).length;
    if (given !== 1) throw ctx.usage('say which machines to wake: MAC addresses, --group NAME or --session ID (one of them)');
    const bad = macs.find((m) => !MAC_RE.test(m));
    if (bad !== undefined) throw ctx.usage(`"${bad}" is not a MAC address such as 52:54:00:12:34:56`);
    if (group !== undefined && !NAME_RE.test(group)) throw ctx.usage(`--group takes a group name of 1-64 letters, digits, ".", "_" or "-"; got "${group}"`);
    const body = macs.length > 0 ? { machines: macs } : group !== undefined ? { group } : { session };
    const r = await api<WakeAnswer>(ctx.client(), 'POST', '/api/wake', body);
    ctx.out(() => {
      console.log(`sent ${r.packets} wake-up packets for ${r.macs.length} machine${r.macs.length === 1 ? '' : 's'} to ${r.broadcasts.join(', ')}: ${r.macs.map(safeText).join(' ')}`);
      if (r.unknown.length > 0) console.log(`not known to the server (woken anyway; check the address): ${r.unknown.map(safeText).join(' ')}`);
    }, r);
    return 0;
  },
};
