/**
 * Runs `clonecast send` in the lab's server namespace and `clonecast
 * receive` in client namespaces, as separate processes, and collects what
 * they print.
 */
import type { ChildProcess } from 'node:child_process';
import { CLI } from '../helpers.js';
import type { Lab } from '../../server/lab/netns.js';

/** One receiver to start. */
export interface ReceiverPlan {
  /** Client index in the lab. */
  k: number;
  disk: string;
  /** Start this many ms after the sender is up. */
  delayMs?: number;
  extra?: string[];
  /** Runs this shell command on the host first (e.g. to enter a cgroup), then the receiver in its namespace. */
  shellPrefix?: string;
}

/** What a finished process printed. */
export interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  json: any;
  /** ms from the sender's start to this process's exit. */
  endedAt: number;
}

function collect(child: ChildProcess, t0: number): Promise<Finished> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr?.on('data', (d) => (stderr += d));
    child.on('close', (code, signal) => {
      let json: any;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ code, signal, stdout, stderr, json, endedAt: performance.now() - t0 });
    });
  });
}

/** A started sender: its session URL and a promise of its end. */
export interface StartedSender {
  url: string;
  t0: number;
  done: Promise<Finished>;
  child: ChildProcess;
}

/** The key file each sender printed, by session URL (receivers need it: --key-file). */
const keyFiles = new Map<string, string>();

/** The key file the sender of session url wrote (receivers, and a test playing a session member, read it). */
export function keyFileOf(url: string): string | undefined {
  return keyFiles.get(url);
}

/** Starts the sender in the server namespace; resolves once it printed its session URL and key file. */
export async function startSender(lab: Lab, data: string, ref: string, clients: number, extra: string[] = []): Promise<StartedSender> {
  const t0 = performance.now();
  const child = lab.spawnIn(lab.server.ns, process.execPath, [CLI, 'send', ref, '--data', data, '--address', lab.server.address, '--clients', String(clients), '--json', ...extra]);
  const done = collect(child, t0);
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /session: (http:\/\/\S+)/.exec(err);
      const k = /key file: (\S+)/.exec(err);
      if (m && k) {
        keyFiles.set(m[1], k[1]);
        resolve(m[1]);
      }
    });
    void done.then((f) => reject(new Error(`sender exited before it was ready: ${f.stderr}`)));
  });
  return { url, t0, done, child };
}

/** Starts one receiver in client namespace plan.k. */
export function startReceiver(lab: Lab, url: string, plan: ReceiverPlan, t0: number): { child: ChildProcess; done: Promise<Finished> } {
  const host = lab.clients[plan.k];
  const args = [CLI, 'receive', '--from', url, '--key-file', keyFiles.get(url) ?? '', '--disk', plan.disk, '--address', host.address, '--json', ...(plan.extra ?? [])];
  const child =
    plan.shellPrefix === undefined
      ? lab.spawnIn(host.ns, process.execPath, args)
      : lab.spawnInAfter(plan.shellPrefix, host.ns, process.execPath, args);
  return { child, done: collect(child, t0) };
}

/** Runs a whole session: the sender and every receiver (with their delays); resolves when all have exited. */
export async function runSession(
  lab: Lab,
  data: string,
  ref: string,
  plans: ReceiverPlan[],
  senderExtra: string[] = [],
): Promise<{ sender: Finished; receivers: Finished[] }> {
  const s = await startSender(lab, data, ref, plans.length, senderExtra);
  const receivers = await Promise.all(
    plans.map(async (plan) => {
      if (plan.delayMs) await new Promise((r) => setTimeout(r, plan.delayMs));
      return startReceiver(lab, s.url, plan, s.t0).done;
    }),
  );
  return { sender: await s.done, receivers };
}
