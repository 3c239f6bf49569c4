/**
 * /metrics: the server's counters and gauges in Prometheus text format
 * (exposition format 0.0.4), behind the admin token (server/api.ts).
 */
import { MACHINE_STATES, SESSION_STATES } from '../protocol/states.js';
import { serverHealth, type ApiContext } from './api.js';

/** A label value escaped for the text format. */
function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Prometheus text format (exposition format 0.0.4). */
export function metrics(c: ApiContext): string {
  const lines: string[] = [];
  const gauge = (name: string, help: string, type: 'gauge' | 'counter', samples: [Record<string, string>, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) {
      const l = Object.entries(labels).map(([k, x]) => `${k}="${esc(x)}"`).join(',');
      lines.push(`${name}${l ? `{${l}}` : ''} ${v}`);
    }
  };
  const sessions = c.sessions.list();
  const byState = (xs: { state: string }[], states: string[]) => states.map((s) => [{ state: s }, xs.filter((x) => x.state === s).length] as [Record<string, string>, number]);
  gauge('clonecast_sessions', 'Sessions by state.', 'gauge', byState(sessions, [...SESSION_STATES]));
  const machines = c.registry.list();
  const seen = machines.map((m) => ({ state: m.online ? m.state : 'offline' }));
  gauge('clonecast_machines', 'Machines by state (offline: not connected now).', 'gauge', byState(seen, [...MACHINE_STATES]));
  gauge('clonecast_agents_connected', 'Agents connected now.', 'gauge', [[{}, c.agents.connected]]);
  const live = c.sessions.senders();
  const sum = (f: (x: (typeof live)[number]['sender']['counters']) => number) => live.reduce((a, l) => a + f(l.sender.counters), 0);
  gauge('clonecast_bytes_sent_total', 'Multicast data bytes sent.', 'counter', [[{}, c.sessions.totals.bytes + sum((x) => x.bytesSent)]]);
  gauge('clonecast_packets_sent_total', 'Multicast data packets sent.', 'counter', [[{}, c.sessions.totals.packets + sum((x) => x.packetsSent)]]);
  gauge('clonecast_retransmit_packets_total', 'Data packets sent again as repairs.', 'counter', [[{}, c.sessions.totals.repairPackets + sum((x) => x.repairPackets)]]);
  // Reports the active senders refused: a MAC that does not verify, or a receiver no session admitted (an attack, or a stale agent).
  gauge('clonecast_mcast_reports_refused', 'STATUS reports refused by the active senders, by reason.', 'gauge', [[{ reason: 'bad_mac' }, sum((x) => x.dropped.badMac)], [{ reason: 'unknown_receiver' }, sum((x) => x.dropped.unknownReceiver)], [{ reason: 'protocol_version' }, sum((x) => x.dropped.version)]]);
  const active = machines.filter((m) => m.progress !== null);
  gauge('clonecast_machine_loss_ratio', 'Packet loss a receiving machine reports, last interval.', 'gauge', active.map((m) => [{ machine: m.id }, m.progress!.loss]));
  gauge('clonecast_machine_bytes_written', 'Bytes a machine has written in its session.', 'gauge', active.map((m) => [{ machine: m.id }, m.progress!.bytesWritten]));
  gauge('clonecast_control_rejected_total', 'Agent connections closed for bad frames or credentials.', 'counter', Object.entries(c.agents.rejected).map(([reason, n]) => [{ reason }, n]));
  const files = serverHealth(c).files;
  gauge('clonecast_state_write_failures_total', 'Failed writes of a state file (retried with back-off).', 'counter', files.map((f) => [{ file: f.file }, f.failures]));
  gauge('clonecast_state_dirty', 'A state file has changes not yet on disk (1) or not (0).', 'gauge', files.map((f) => [{ file: f.file }, f.dirty ? 1 : 0]));
  gauge('clonecast_state_ok', 'The last write of a state file succeeded (1) or failed (0).', 'gauge', files.map((f) => [{ file: f.file }, f.ok ? 1 : 0]));
  if (c.loopDelay !== undefined) {
    // The histogram reports nanoseconds; its max is since the server started.
    gauge('clonecast_event_loop_delay_max_seconds', 'Longest event-loop delay since the server started.', 'gauge', [[{}, c.loopDelay.max / 1e9]]);
    gauge('clonecast_event_loop_delay_p99_seconds', '99th percentile of the event-loop delay since the server started.', 'gauge', [[{}, c.loopDelay.percentile(99) / 1e9]]);
  }
  const pxe = c.pxe?.();
  if (pxe !== undefined) {
    gauge('clonecast_dhcp_packets_total', 'DHCP packets by what became of them.', 'counter', Object.entries(pxe.dhcp.counters).map(([result, n]) => [{ result }, n]));
    gauge('clonecast_tftp_total', 'TFTP requests, transfers and packets by outcome.', 'counter', Object.entries(pxe.tftp.counters).map(([what, n]) => [{ what }, n]));
  }
  return `${lines.join('\n')}\n`;
}
