/**
 * Following the server's work live and printing its tables: deploy (create a
 * session and follow it), capture (start one and follow it), and the
 * machines, sessions and captures lists. Every string a machine supplied
 * goes through safeText() before it reaches the terminal.
 */
import { FINAL_SESSION_STATES } from '../protocol/states.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { formatBytes, formatDuration } from '../server/progress.js';
import { api, type CaptureRequest, type CaptureView, type Client, type DeployRequest, type MachineView, type SessionMachineView, type SessionView } from './api.js';
import { safeText } from './output.js';

function pad(s: string, n: number): string {
  return s.length >= n ? s.slice(0, n) : s + ' '.repeat(n - s.length);
}

/** One line per machine of a session: state, %, rate, ETA, loss. */
export function sessionTable(s: SessionView, machines: Map<string, MachineView>): string[] {
  const lines = [`${pad('MACHINE', 18)} ${pad('NAME', 12)} ${pad('STATE', 10)} ${pad('DONE', 6)} ${pad('RATE', 11)} ${pad('ETA', 7)} ${pad('LOSS', 6)} NOTE`];
  for (const [id, m] of Object.entries(s.machines)) {
    const pct = m.chunksTotal > 0 ? `${Math.floor((100 * m.chunksDone) / m.chunksTotal)}%` : m.state === 'done' ? '100%' : '-';
    const rate = m.rateBps > 0 ? `${formatBytes(m.rateBps)}/s` : '-';
    // The server works the ETA out with the image's chunk size (registry progress).
    const etaSeconds = m.state === 'receiving' ? machines.get(id)?.progress?.etaSeconds : null;
    const eta = etaSeconds !== null && etaSeconds !== undefined ? formatDuration(etaSeconds) : '-';
    const already = m.skipped > 0 ? `${m.skipped} chunks already on the disk` : '';
    const note = safeText(m.error) || (m.state === 'done' ? `verified in ${m.seconds.toFixed(1)} s${already ? `; ${already}` : ''}` : already);
    lines.push(`${pad(safeText(id), 18)} ${pad(machineName(machines.get(id)), 12)} ${pad(m.state, 10)} ${pad(pct, 6)} ${pad(rate, 11)} ${pad(eta, 7)} ${pad(`${(m.loss * 100).toFixed(1)}%`, 6)} ${note}`);
  }
  if (Object.keys(s.machines).length === 0) lines.push('(no machine has joined yet: start agents with "clonecast agent --server URL")');
  return lines;
}

const ENDED = FINAL_SESSION_STATES;

/** What `deploy` prints at the end and returns with --json. */
export interface DeploySummary {
  session: number;
  image: string;
  state: string;
  reason: string;
  machines: Record<string, SessionMachineView>;
}

/** Creates a session and follows it to the end; true if every machine finished and verified. */
export async function deploy(c: Client, req: DeployRequest, o: { json: boolean; stream: NodeJS.WriteStream; started?: (s: SessionView) => void }): Promise<{ ok: boolean; summary: DeploySummary }> {
  const created = await api<SessionView & { woken?: { macs: string[]; broadcasts: string[] } | { error: string }; warnings?: string[] }>(c, 'POST', '/api/sessions', req);
  o.started?.(created);
  const out = o.json ? null : o.stream;
  out?.write(`session ${created.id}: ${created.image}@${created.version} to ${created.group}:${created.port}; waiting for machines (Ctrl-C leaves it running)\n`);
  const woken = created.woken;
  if (woken !== undefined && 'error' in woken) out?.write(`warning: the machines were not woken: ${safeText(woken.error)}\n`);
  else if (woken !== undefined) out?.write(`woke ${woken.macs.length} machine${woken.macs.length === 1 ? '' : 's'} (Wake-on-LAN to ${woken.broadcasts.join(', ')})\n`);
  for (const w of created.warnings ?? []) out?.write(`warning: ${safeText(w)}\n`);
  const tty = out?.isTTY === true;
  let drawn = 0;
  let lastPlain = 0;
  let lastText = '';
  let unreachable = false;
  let s = created;
  for (;;) {
    await new Promise((r) => setTimeout(r, tty ? 500 : 1000));
    let machines = new Map<string, MachineView>();
    try {
      [s] = await Promise.all([
        api<SessionView>(c, 'GET', `/api/sessions/${created.id}`),
        api<MachineView[]>(c, 'GET', '/api/machines').then((ms) => (machines = new Map(ms.map((m) => [m.id, m])))),
      ]);
      if (unreachable) out?.write('server is back\n');
      unreachable = false;
    } catch (err) {
      if (!(err instanceof ClonecastError && err.code === ERR.UNREACHABLE)) throw err;
      if (!unreachable) out?.write(`${err.message}; retrying (the session resumes when the server is back)\n`);
      unreachable = true;
      continue;
    }
    const lines = [`session ${s.id} ${s.state}${s.reason ? `: ${safeText(s.reason)}` : ''}`, ...sessionTable(s, machines)];
    const text = lines.join('\n');
    if (tty) {
      out!.write(`${drawn > 0 ? `\x1b[${drawn}F\x1b[J` : ''}${text}\n`);
      drawn = lines.length;
    } else if (out !== null && (ENDED.has(s.state) || (text !== lastText && Date.now() - lastPlain >= 5000))) {
      out.write(`${text}\n`);
      lastPlain = Date.now();
      lastText = text;
    }
    if (ENDED.has(s.state)) break;
  }
  const machines = Object.values(s.machines);
  const done = machines.filter((m) => m.state === 'done').length;
  out?.write(`\n${done} of ${machines.length} machine(s) done${s.verify ? ' and verified' : ' (not verified: --no-verify)'}; session ${s.state}\n`);
  for (const [id, m] of Object.entries(s.machines)) if (m.state !== 'done') out?.write(`  ${safeText(id)}: ${m.state}: ${safeText(m.error) || 'no reason given'}\n`);
  return { ok: s.state === 'done', summary: { session: s.id, image: `${s.image}@${s.version}`, state: s.state, reason: s.reason, machines: s.machines } };
}

/** Starts a capture and follows it; resolves with its final record. */
export async function capture(c: Client, req: CaptureRequest, o: { json: boolean; stream: NodeJS.WriteStream; started?: (r: CaptureView) => void }): Promise<CaptureView> {
  type Rec = CaptureView;
  let r = await api<Rec>(c, 'POST', '/api/captures', req);
  o.started?.(r);
  const out = o.json ? null : o.stream;
  out?.write(`capture ${r.id}: ${safeText(r.machine)} ${safeText(r.device)} into image ${r.image}\n`);
  let last = 0;
  while (r.state === 'running') {
    await new Promise((res) => setTimeout(res, 500));
    try {
      r = await api<Rec>(c, 'GET', `/api/captures/${r.id}`);
    } catch (err) {
      if (!(err instanceof ClonecastError && err.code === ERR.UNREACHABLE)) throw err;
      continue; // the server restarts: the capture resumes
    }
    const p = r.progress;
    if (out !== null && Date.now() - last > (out.isTTY ? 500 : 5000) && p.chunksTotal > 0) {
      last = Date.now();
      out.write(`  ${Math.floor((100 * p.chunksDone) / p.chunksTotal)}%  read ${formatBytes(p.bytesRead)}, sent ${formatBytes(p.bytesSent)}, ${p.reused} chunks already stored\n`);
    }
  }
  if (r.state === 'done' && r.result !== null) {
    const x = r.result;
    out?.write(
      `captured ${r.image}@${x.version} from ${r.machine}: ${formatBytes(x.diskSize)} disk, read ${formatBytes(r.progress.bytesRead)}, sent ${formatBytes(r.received.bytes)} (${r.progress.reused} chunks the store already had), ${formatBytes(x.newBytes)} new in the store${r.received.bytes > 0 ? `; read/sent ${x.dedupeRatio.toFixed(1)}x` : ''}${x.badRanges.length ? `; ${x.badRanges.length} unreadable range(s) stored as zeros` : ''}\n`,
    );
  } else out?.write(`capture ${r.id} failed: ${safeText(r.error)}\n`);
  return r;
}

/** The name to show for a machine: the operator's name, else its host name (safe to print). */
function machineName(m: MachineView | undefined): string {
  return safeText(m?.name || m?.hostname || '');
}

/** Prints `clonecast machines`. */
export function printMachines(ms: MachineView[]): void {
  console.log(`${pad('MACHINE', 18)} ${pad('NAME', 16)} ${pad('HOSTNAME', 16)} ${pad('GROUPS', 16)} ${pad('ADDRESS', 15)} ${pad('STATE', 10)} ${pad('LAST IMAGE', 20)} LAST SEEN`);
  for (const m of ms) {
    const last = m.lastImage ? `${safeText(m.lastImage.name)}@${m.lastImage.version}` : '-';
    const groups = m.groups !== undefined && m.groups.length > 0 ? m.groups.map(safeText).join(',') : '-';
    console.log(
      `${pad(safeText(m.id), 18)} ${pad(safeText(m.name || '-'), 16)} ${pad(safeText(m.hostname || '-'), 16)} ${pad(groups, 16)} ${pad(safeText(m.address), 15)} ${pad(m.online ? safeText(m.state) : 'offline', 10)} ${pad(last, 20)} ${safeText(m.lastSeen)}${m.trust === 'unverified' ? '  [unverified: connected without a credential]' : ''}${m.lastError ? `  (${safeText(m.lastError)})` : ''}`,
    );
  }
  if (ms.length === 0) console.log('(no machine has connected yet)');
}

/** Prints `clonecast sessions`. */
export function printSessions(ss: SessionView[]): void {
  console.log(`${pad('ID', 4)} ${pad('IMAGE', 20)} ${pad('STATE', 10)} ${pad('MACHINES', 9)} ${pad('CREATED', 24)} DETAIL`);
  for (const s of ss) {
    const ms = Object.values(s.machines);
    const done = ms.filter((m) => m.state === 'done').length;
    console.log(`${pad(String(s.id), 4)} ${pad(`${s.image}@${s.version}`, 20)} ${pad(s.state, 10)} ${pad(`${done}/${ms.length}`, 9)} ${pad(s.createdAt, 24)} ${safeText(s.reason)}`);
  }
  if (ss.length === 0) console.log('(no sessions yet: clonecast deploy NAME)');
}

/** Prints `clonecast captures`. */
export function printCaptures(cs: CaptureView[]): void {
  console.log(`${pad('ID', 4)} ${pad('MACHINE', 18)} ${pad('IMAGE', 20)} ${pad('STATE', 8)} ${pad('DONE', 6)} ERROR`);
  for (const c of cs) {
    const p = c.progress;
    const pct = c.state === 'done' ? '100%' : p.chunksTotal > 0 ? `${Math.floor((100 * p.chunksDone) / p.chunksTotal)}%` : '-';
    const image = c.result !== null ? `${c.image}@${c.result.version}` : c.image;
    console.log(`${pad(String(c.id), 4)} ${pad(safeText(c.machine), 18)} ${pad(safeText(image), 20)} ${pad(safeText(c.state), 8)} ${pad(pct, 6)} ${safeText(c.error) || '-'}`);
  }
  if (cs.length === 0) console.log('(no captures yet: clonecast capture MACHINE NAME)');
}
