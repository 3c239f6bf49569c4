/**
 * The command-line parser: each command declares its own options, and a
 * command is given only those. Built on node:util parseArgs (tokens, not
 * strict mode) so every mistake gets a message of ours: the option's name,
 * the closest valid one, and which command's help to read.
 */
import { parseArgs } from 'node:util';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** How an option's value is read. */
export type OptionKind =
  | 'flag' // a boolean switch
  | 'string'
  | 'positive' // a whole number > 0
  | 'port' // a whole number 0-65535
  | 'number'; // a number >= 0 (seconds, percent, milliseconds)

/** One option of a command. */
export interface OptionSpec {
  kind: OptionKind;
  /** One sentence for --help. */
  help: string;
  /** The value's name in --help, e.g. DIR, N, URL. */
  value?: string;
  /** The default, as shown in --help. */
  default?: string;
  /** A string option that may be given more than once; its value is the list (string[]). */
  repeatable?: boolean;
}

/** A positional argument. */
export interface Positional {
  name: string;
  optional?: boolean;
  /** The last positional only: takes every remaining argument (e.g. MAC...). */
  repeated?: boolean;
}

/** Parsed option values: strings, numbers (for number kinds) and booleans. */
export type Values = Record<string, string | number | boolean | string[] | undefined>;

/** What a command's run() gets from the parser. */
export interface Parsed {
  values: Values;
  positionals: string[];
}

/** The parts of a command the parser reads. */
export interface CommandSpec {
  name: string;
  options: Record<string, OptionSpec>;
  positionals: Positional[];
}

/** A usage error that points at the command's own help. */
export function usageError(command: string | undefined, message: string): ClonecastError {
  return new ClonecastError(ERR.USAGE, `${message}\nRun "clonecast ${command === undefined ? '' : `${command} `}--help" for ${command === undefined ? 'the list of commands' : 'its options'}.`);
}

/** Levenshtein distance (insert, delete, substitute each cost 1). */
export function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length];
}

/** The candidate closest to word, if it is close enough to be a likely typo. */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  // A prefix ("--client" for "--clients") or a few edits in a long enough word.
  if (best !== undefined && (best.startsWith(word) || word.startsWith(best)) && word.length >= 3) return best;
  return bestD <= (word.length <= 3 ? 1 : Math.min(3, Math.max(2, Math.floor(word.length / 3)))) ? best : undefined;
}

/**
 * Parses args (what follows the command's name) against cmd's options.
 * others maps an option name to the commands that take it, for the hint
 * when an option belongs elsewhere.
 */
export function parseCommand(cmd: CommandSpec, args: string[], others: Map<string, string[]> = new Map()): Parsed {
  const options: Record<string, OptionSpec> = { ...cmd.options, help: { kind: 'flag', help: '' } };
  const config: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, o] of Object.entries(options)) config[name] = { type: o.kind === 'flag' ? 'boolean' : 'string' };
  config.help.short = 'h';
  const { tokens } = parseArgs({ args, options: config, allowPositionals: true, strict: false, tokens: true });
  const values: Values = {};
  const positionals: string[] = [];
  const fail = (m: string) => usageError(cmd.name, m);
  for (const t of tokens) {
    if (t.kind === 'positional') {
      positionals.push(t.value);
      continue;
    }
    if (t.kind !== 'option') continue;
    const shown = t.rawName;
    const spec = options[t.name];
    if (spec === undefined) {
      const guess = closest(t.name, Object.keys(cmd.options));
      const elsewhere = (others.get(t.name) ?? []).filter((c) => c !== cmd.name);
      let m = `unknown option ${shown} for ${cmd.name}`;
      if (guess !== undefined) m += `; did you mean --${guess}?`;
      if (elsewhere.length > 0) m += ` (${shown} belongs to ${elsewhere.slice(0, 4).join(', ')}${elsewhere.length > 4 ? ', ...' : ''})`;
      throw fail(m);
    }
    if (spec.kind === 'flag') {
      if (t.inlineValue) throw fail(`${shown} is a switch and takes no value (got "${t.value}")`);
      values[t.name] = true;
      continue;
    }
    // parseArgs (not strict) takes the next word as the value even if it is an option.
    if (t.value === undefined || (!t.inlineValue && t.value.startsWith('-') && t.value.length > 1)) {
      throw fail(`${shown} needs a value${spec.value !== undefined ? ` (${spec.value})` : ''}`);
    }
    const value = readValue(shown, spec, t.value, fail);
    if (spec.repeatable === true) values[t.name] = [...((values[t.name] as string[] | undefined) ?? []), String(value)];
    else values[t.name] = value;
  }
  if (values.help === true) return { values, positionals };
  const required = cmd.positionals.filter((p) => !p.optional).length;
  const most = cmd.positionals.at(-1)?.repeated === true ? Infinity : cmd.positionals.length;
  if (positionals.length < required || positionals.length > most) {
    const names = cmd.positionals.map((p) => (p.optional ? `[${p.name}]` : p.name) + (p.repeated === true ? '...' : '')).join(' ');
    const got = positionals.length === 0 ? 'none' : positionals.map((p) => `"${p}"`).join(' ');
    throw fail(cmd.positionals.length === 0 ? `"clonecast ${cmd.name}" takes no arguments (got ${got})` : `"clonecast ${cmd.name}" takes ${names} (got ${got})`);
  }
  return { values, positionals };
}

function readValue(shown: string, spec: OptionSpec, raw: string, fail: (m: string) => Error): string | number {
  if (spec.kind === 'string') return raw;
  const n = raw.trim() === '' ? NaN : Number(raw);
  if (spec.kind === 'positive' && !(Number.isSafeInteger(n) && n > 0)) throw fail(`${shown} takes a positive whole number, got "${raw}"`);
  if (spec.kind === 'port' && !(Number.isSafeInteger(n) && n >= 0 && n <= 65535)) throw fail(`${shown} takes a port number (0-65535), got "${raw}"`);
  if (spec.kind === 'number' && !(Number.isFinite(n) && n >= 0)) throw fail(`${shown} takes a number (0 or more), got "${raw}"`);
  return n;
}

/** A comma-separated list, empty items dropped. */
export function list(v: string | number | boolean | string[] | undefined): string[] | undefined {
  if (typeof v !== 'string') return undefined;
  return v.split(',').map((x) => x.trim()).filter((x) => x !== '');
}
