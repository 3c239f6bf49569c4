/** `clonecast machines` and `clonecast machines set MAC`. */
import { list } from '../args.js';
import { COMMON, SERVER, type Command } from '../command.js';
import { api, type MachineView } from '../api.js';
import { safeText } from '../output.js';
import { NAME_RE } from './deploy.js';

/** clonecast machines */
export const machines: Command = {
  name: 'machines',
  summary: 'List the machines the server knows: id, name, host name, groups, address, state, last image.',
  usage: '',
  positionals: [],
  options: { ...SERVER, ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const ms = await api<MachineView[]>(ctx.client(), 'GET', '/api/machines');
    const { printMachines } = await import('../admin.js');
    ctx.out(() => printMachines(ms), ms);
    return 0;
  },
};

/** clonecast machines set MAC */
export const machinesSet: Command = {
  name: 'machines set',
  summary: 'Name a machine and set the groups it belongs to (deploy --group NAME picks a group).',
  usage: 'MAC [--name NAME] [--groups G1,G2] [--confirm]',
  positionals: [{ name: 'MAC' }],
  options: {
    name: { kind: 'string', value: 'NAME', help: 'The machine\'s name: 1-64 letters, digits, ".", "_" or "-".' },
    groups: { kind: 'string', value: 'G1,G2', help: 'The groups it belongs to, replacing the ones it had (names as for --name; "" for none).' },
    confirm: { kind: 'flag', help: 'Go ahead even though a session of one of the new groups takes the machine at once and overwrites its disk (without it the server refuses and names the session).' },
    ...SERVER,
    ...COMMON,
  },
  interrupted: 'the change was either made or not; check with "clonecast machines"',
  async run(ctx) {
    const mac = ctx.positionals[0].toLowerCase().replace(/-/g, ':');
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) throw ctx.usage(`MAC is a machine's MAC address such as 52:54:00:12:34:56; got "${ctx.positionals[0]}"`);
    const name = ctx.str('name');
    const groups = list(ctx.str('groups'));
    if (name === undefined && groups === undefined) throw ctx.usage('say what to set: --name NAME and/or --groups G1,G2');
    if (name !== undefined && !NAME_RE.test(name)) throw ctx.usage(`--name takes 1-64 letters, digits, ".", "_" or "-"; got "${name}"`);
    const bad = groups?.find((g) => !NAME_RE.test(g));
    if (bad !== undefined) throw ctx.usage(`--groups takes group names of 1-64 letters, digits, ".", "_" or "-"; "${bad}" is not one`);
    const m = await api<MachineView>(ctx.client(), 'PATCH', `/api/machines/${mac}`, { name, groups, ...(ctx.flag('confirm') ? { confirm: true } : {}) });
    ctx.out(() => console.log(`${safeText(m.id)}: name ${safeText(m.name || '-')}, groups ${m.groups?.length ? m.groups.map(safeText).join(',') : '-'}`), m);
    return 0;
  },
};
