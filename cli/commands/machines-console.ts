/** `clonecast machines show MAC` and `clonecast machines forget MAC`: a machine's page and its removal, as the dashboard has them. */
import { COMMON, SERVER, type Command, type Context } from '../command.js';
import { api, type MachineView } from '../api.js';
import { safeText } from '../output.js';

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function macOf(ctx: Context): string {
  const mac = ctx.positionals[0].toLowerCase().replace(/-/g, ':');
  if (!MAC.test(mac)) throw ctx.usage(`MAC is a machine's MAC address such as 52:54:00:12:34:56; got "${ctx.positionals[0]}"`);
  return mac;
}

/** A machine with its event log. */
interface MachineDetail extends MachineView {
  bootMode: string;
  disks: { device?: string; size?: number | string; model?: string }[];
  events: { at: string; kind: string; text: string }[];
}

/** clonecast machines show MAC */
export const machinesShow: Command = {
  name: 'machines show',
  summary: 'Show one machine: names, groups, address, boot mode, disks, last image and its events (boot, connect, join, drop, result).',
  usage: 'MAC',
  positionals: [{ name: 'MAC' }],
  options: { ...SERVER, ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const m = await api<MachineDetail>(ctx.client(), 'GET', `/api/machines/${macOf(ctx)}`);
    ctx.out(() => {
      console.log(`${safeText(m.id)}  name ${safeText(m.name || '-')}  host ${safeText(m.hostname || '-')}  groups ${m.groups?.length ? m.groups.map(safeText).join(',') : '-'}`);
      console.log(`address ${safeText(m.address)}  ${m.online ? safeText(m.state) : 'offline'}  boot ${safeText(m.bootMode)}  last image ${m.lastImage ? `${safeText(m.lastImage.name)}@${m.lastImage.version}` : '-'}`);
      for (const d of m.disks) console.log(`disk ${safeText(String(d.device ?? '?'))} ${String(d.size ?? '')} ${safeText(String(d.model ?? ''))}`);
      for (const e of m.events) console.log(`${safeText(e.at)}  ${safeText(e.kind).padEnd(10)} ${safeText(e.text)}`);
    }, m);
    return 0;
  },
};

/** clonecast machines forget MAC */
export const machinesForget: Command = {
  name: 'machines forget',
  summary: 'Forget an offline, idle machine: its names, groups, history and secret (it is new again if it ever connects).',
  usage: 'MAC',
  positionals: [{ name: 'MAC' }],
  options: { ...SERVER, ...COMMON },
  interrupted: 'the machine was either forgotten or not; check with "clonecast machines"',
  async run(ctx) {
    const r = await api<{ forgotten: string }>(ctx.client(), 'DELETE', `/api/machines/${macOf(ctx)}`);
    ctx.out(() => console.log(`forgot ${safeText(r.forgotten)}`), r);
    return 0;
  },
};
