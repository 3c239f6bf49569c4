/**
 * What every command file exports (a Command), the context its run() gets,
 * and the option sets several commands share. Options are given only to the
 * commands they apply to.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError } from '../protocol/errors.js';
import { projectRoot } from '../native/addon.js';
import { DEFAULT_LISTEN } from '../server/defaults.js';
import { dataDir, Store } from '../server/store/store.js';
import { usageError, type OptionSpec, type Positional, type Values } from './args.js';
import { clientFingerprint, clientToken, type Client } from './api.js';
import { emitJson } from './output.js';

/** One command of the CLI (a file under cli/commands/ exports one or more). */
export interface Command {
  /** The words that select it: "image export", "deploy". */
  name: string;
  /** One line for "clonecast --help". */
  summary: string;
  /** What follows "clonecast NAME" in the usage line, e.g. "NAME[@V] DEST". */
  usage: string;
  positionals: Positional[];
  options: Record<string, OptionSpec>;
  /** Lines of explanation for "clonecast NAME --help". */
  details?: string[];
  /** What Ctrl-C leaves behind (printed when it happens, and in --help). */
  interrupted: string | ((ctx: Context) => string);
  /** Left out of "clonecast --help" (internal helpers). */
  hidden?: boolean;
  run(ctx: Context): Promise<number>;
}

/** What run() gets. */
export interface Context {
  command: Command;
  values: Values;
  positionals: string[];
  json: boolean;
  /** Progress lines go to stderr, or nowhere with --json. */
  progress: { stream: NodeJS.WriteStream | null };
  /** Prints human output, or data as JSON with --json. */
  out(human: () => void, data: unknown): void;
  /** A string option. */
  str(name: string): string | undefined;
  /** A number option (already checked by the parser). */
  num(name: string): number | undefined;
  /** A switch. */
  flag(name: string): boolean;
  /** Every value of a repeatable option, in the order given. */
  strs(name: string): string[];
  /** The image store (--data). */
  store(): Store;
  /** The server to talk to, its certificate's fingerprint and the token for it (--server, --fingerprint, --token, --token-file). */
  client(): Client;
  /** A usage error (exit 2) pointing at this command's help. */
  usage(message: string): ClonecastError;
  /** Replaces what Ctrl-C prints, once more is known (e.g. a session's ID). */
  setInterrupted(text: string): void;
  /** Handles Ctrl-C itself instead (serve, agent); a second Ctrl-C still exits. */
  onInterrupt(handler: () => void): void;
}

/** --data and --json: every command has them. */
export const COMMON: Record<string, OptionSpec> = {
  data: { kind: 'string', value: 'DIR', help: 'The image store and the server\'s state.', default: '$CLONECAST_DATA, else ~/.local/share/clonecast' },
  json: { kind: 'flag', help: 'Print a machine-readable JSON document on stdout instead of text.' },
};

/** --workers: commands that compress, check or write chunks. */
export const WORKERS: Record<string, OptionSpec> = {
  workers: { kind: 'positive', value: 'N', help: 'Worker threads for chunk work.', default: 'cores + 1' },
};

/** --server, --fingerprint, --token, --token-file: commands that talk to a running server. */
export const SERVER: Record<string, OptionSpec> = {
  server: { kind: 'string', value: 'URL', help: 'The running server (https://).', default: `$CLONECAST_SERVER, else https://${DEFAULT_LISTEN}/` },
  fingerprint: { kind: 'string', value: 'SHA256', help: 'The SHA-256 fingerprint of the server\'s certificate ("clonecast serve" prints it); nothing is sent to a server that shows another.', default: '$CLONECAST_FINGERPRINT, else the data directory\'s certificate' },
  token: { kind: 'string', value: 'T', help: 'The server\'s token; it shows in "ps", so prefer CLONECAST_TOKEN or --token-file.', default: '$CLONECAST_TOKEN, else the data directory\'s token file' },
  'token-file': { kind: 'string', value: 'PATH', help: 'Read the server\'s token from this file (the preferred way with CLONECAST_TOKEN).' },
};

/** The server URL from --server, CLONECAST_SERVER, or the default. */
export function serverUrl(values: Values): string {
  return (values.server as string | undefined) ?? process.env.CLONECAST_SERVER ?? `https://${DEFAULT_LISTEN}/`;
}

/** clonecast's version, from package.json. */
export function version(): string {
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** A log line on stderr, as serve and agent print them. */
export function logLine(level: string, message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${level.padEnd(4)} ${message}\n`);
}

/** Builds the context for one run; the interrupt hooks are main's. */
export function makeContext(command: Command, values: Values, positionals: string[], hooks: Pick<Context, 'setInterrupted' | 'onInterrupt'>): Context {
  const json = values.json === true;
  let store: Store | undefined;
  const ctx: Context = {
    command,
    values,
    positionals,
    json,
    progress: { stream: json ? null : process.stderr },
    out: (human, data) => (json ? emitJson(data) : human()),
    str: (n) => (typeof values[n] === 'string' ? (values[n] as string) : undefined),
    num: (n) => (typeof values[n] === 'number' ? (values[n] as number) : undefined),
    flag: (n) => values[n] === true,
    strs: (n) => (Array.isArray(values[n]) ? (values[n] as string[]) : []),
    store: () => (store ??= Store.open(dataDir(ctx.str('data')))),
    client: () => ({
      server: serverUrl(values),
      fingerprint: clientFingerprint({ flag: ctx.str('fingerprint'), dataRoot: dataDir(ctx.str('data')) }),
      token: clientToken({ flag: ctx.str('token'), file: ctx.str('token-file'), dataRoot: dataDir(ctx.str('data')) }),
    }),
    usage: (m) => usageError(command.name, m),
    ...hooks,
  };
  return ctx;
}
