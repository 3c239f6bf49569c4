/**
 * The clonecast command line: finds the command, parses its options, runs
 * it, and maps errors to exit codes. The only place that calls process.exit;
 * exit codes are listed in EXIT and in the README. Each command lives in its
 * own file under cli/commands/.
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import { closest, parseCommand, usageError } from './args.js';
import { makeContext, type Command, type Context } from './command.js';
import { COMMANDS } from './commands/index.js';
import { commandHelp, mainHelp } from './help.js';
import { emitJson } from './output.js';

/** Exit codes (also in the README). */
export const EXIT = Object.freeze({
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  DAMAGED: 4,
  BUSY: 5,
  REFUSED: 6,
  TOO_SMALL: 7,
  IO: 8,
  NEWER_FORMAT: 9,
  /** agent --once --power-exit: done, and the session asks for a reboot / a power-off. */
  AFTER_REBOOT: 10,
  AFTER_POWEROFF: 11,
  INTERRUPTED: 130,
});

const CODE_TO_EXIT: Record<string, number> = {
  [ERR.USAGE]: EXIT.USAGE,
  [ERR.BAD_NAME]: EXIT.USAGE,
  [ERR.NOT_FOUND]: EXIT.NOT_FOUND,
  [ERR.DAMAGED]: EXIT.DAMAGED,
  [ERR.CHUNK_CORRUPT]: EXIT.DAMAGED,
  [ERR.CHUNK_MISSING]: EXIT.DAMAGED,
  [ERR.MANIFEST_CORRUPT]: EXIT.DAMAGED,
  [ERR.BUSY]: EXIT.BUSY,
  [ERR.DISK_IN_USE]: EXIT.REFUSED,
  [ERR.BOOT_DISK]: EXIT.REFUSED,
  [ERR.TARGET_TOO_SMALL]: EXIT.TOO_SMALL,
  [ERR.READ_ERROR]: EXIT.IO,
  [ERR.WRITE_ERROR]: EXIT.IO,
  [ERR.MANIFEST_VERSION]: EXIT.NEWER_FORMAT,
  [ERR.UNAUTHORIZED]: EXIT.REFUSED,
  [ERR.REFUSED]: EXIT.REFUSED,
  [ERR.UNREACHABLE]: EXIT.NOT_FOUND,
};

/** Which commands take each option (for "--x belongs to ..." hints). */
function optionOwners(): Map<string, string[]> {
  const owners = new Map<string, string[]>();
  for (const c of COMMANDS) for (const o of Object.keys(c.options)) owners.set(o, [...(owners.get(o) ?? []), c.name]);
  return owners;
}

/** The command argv names, and the rest of argv; a usage error if there is none. */
function findCommand(argv: string[]): { command: Command; rest: string[] } {
  const [first, second] = argv;
  const two = COMMANDS.find((c) => c.name === `${first} ${second}`);
  if (two !== undefined) return { command: two, rest: argv.slice(2) };
  const one = COMMANDS.find((c) => c.name === first);
  const subs = COMMANDS.filter((c) => c.name.startsWith(`${first} `) && !c.hidden).map((c) => c.name.slice(first.length + 1));
  const wordAfter = second !== undefined && !second.startsWith('-');
  // "sessions frobnicate": a group whose base command takes no words.
  if (one !== undefined && !(wordAfter && subs.length > 0 && one.positionals.length === 0)) return { command: one, rest: argv.slice(1) };
  if (subs.length > 0) {
    if (second === '--help' || second === '-h') throw new GroupHelp(first);
    if (!wordAfter) throw usageError(undefined, `"clonecast ${first}" needs a subcommand: ${subs.join(', ')}`);
    const guess = closest(second, subs);
    throw usageError(one !== undefined ? first : undefined, `unknown ${first} subcommand "${second}"${guess !== undefined ? `; did you mean "${first} ${guess}"?` : ''} (${first} takes ${subs.join(', ')})`);
  }
  const firstWords = [...new Set(COMMANDS.filter((c) => !c.hidden).map((c) => c.name.split(' ')[0]))];
  const guess = closest(first, firstWords);
  throw usageError(undefined, `unknown command "${first}"${guess !== undefined ? `; did you mean "${guess}"?` : ''}`);
}

/** "clonecast image --help": a group of subcommands asked for its help. */
class GroupHelp {
  constructor(readonly group: string) {}
}

/** Ctrl-C: what the running command leaves behind, then exit 130; a command may take it over. */
class Interrupts {
  text = 'nothing was started';
  handler: (() => void) | undefined;
  private count = 0;

  install(): void {
    process.on('SIGINT', () => {
      this.count++;
      if (this.handler !== undefined && this.count === 1) {
        this.handler();
        return;
      }
      process.stderr.write(`\ninterrupted: ${this.text}\n`);
      process.exit(EXIT.INTERRUPTED);
    });
  }
}

async function run(argv: string[], interrupts: Interrupts): Promise<number> {
  if (argv.length === 0) {
    process.stdout.write(mainHelp(COMMANDS));
    return EXIT.USAGE;
  }
  if (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    // "clonecast help deploy" is "clonecast deploy --help".
    if (argv.length > 1) return run([...argv.slice(1), '--help'], interrupts);
    process.stdout.write(mainHelp(COMMANDS));
    return EXIT.OK;
  }
  if (argv[0] === '--version') return run(['version', ...argv.slice(1)], interrupts);
  if (argv[0].startsWith('-')) throw usageError(undefined, `the command comes first, e.g. "clonecast image list ${argv[0]} ..." (got the option ${argv[0]} first)`);
  let found: { command: Command; rest: string[] };
  try {
    found = findCommand(argv);
  } catch (err) {
    if (!(err instanceof GroupHelp)) throw err;
    process.stdout.write(mainHelp(COMMANDS.filter((c) => c.name.startsWith(`${err.group} `))));
    return EXIT.OK;
  }
  const { command, rest } = found;
  const { values, positionals } = parseCommand(command, rest, optionOwners());
  if (values.help === true) {
    process.stdout.write(commandHelp(command, COMMANDS));
    return EXIT.OK;
  }
  const ctx: Context = makeContext(command, values, positionals, {
    setInterrupted: (text) => (interrupts.text = text),
    onInterrupt: (handler) => (interrupts.handler = handler),
  });
  interrupts.text = typeof command.interrupted === 'string' ? command.interrupted : command.interrupted(ctx);
  return command.run(ctx);
}

/** Runs the CLI with argv and exits with the right code. */
export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  const interrupts = new Interrupts();
  interrupts.install();
  let code: number;
  try {
    code = await run(argv, interrupts);
  } catch (err) {
    const e = err as ClonecastError & NodeJS.ErrnoException;
    const known = err instanceof ClonecastError;
    code = known ? (CODE_TO_EXIT[e.code] ?? EXIT.FAILURE) : EXIT.FAILURE;
    if (json) emitJson({ error: { code: e.code ?? 'CLONECAST_ERR_INTERNAL', message: e.message, ...(known ? e.details : {}) } });
    else process.stderr.write(`clonecast: ${e.message}\n${!known && process.env.CLONECAST_DEBUG ? `${e.stack}\n` : ''}`);
  }
  process.exit(code);
}
