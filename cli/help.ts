/**
 * The help texts: "clonecast --help" lists the commands with their
 * summaries; "clonecast CMD --help" shows that command's usage, options
 * (each with its sentence and default) and what Ctrl-C leaves behind.
 */
import type { OptionSpec } from './args.js';
import type { Command, Context } from './command.js';

const WIDTH = 100;

/** Wraps text to WIDTH columns, continuation lines indented by indent. */
function wrap(text: string, first: number, indent: number): string {
  const words = text.split(' ');
  const lines: string[] = [];
  let line = '';
  let col = first;
  for (const w of words) {
    if (line !== '' && col + 1 + w.length > WIDTH) {
      lines.push(line);
      line = w;
      col = indent + w.length;
    } else {
      line = line === '' ? w : `${line} ${w}`;
      col += (line === w ? 0 : 1) + w.length;
    }
  }
  lines.push(line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

/** "clonecast --help". */
export function mainHelp(commands: readonly Command[]): string {
  const shown = commands.filter((c) => !c.hidden);
  const left = (c: Command) => `${c.name}${c.usage ? ` ${c.usage.replace(/ \[options\]$/, '')}` : ''}`;
  const lines = ['clonecast - multicast disk imaging', '', 'usage: clonecast COMMAND [options]', '', 'commands:'];
  for (const c of shown) lines.push(`  ${left(c)}`, `      ${wrap(c.summary, 6, 6)}`);
  lines.push(
    '',
    'Every command takes --data DIR (the image store) and --json (machine-readable output).',
    'Run "clonecast COMMAND --help" for a command\'s own options, e.g. "clonecast image export --help".',
    '',
  );
  return lines.join('\n');
}

function optionLeft(name: string, o: OptionSpec): string {
  return `--${name}${o.value !== undefined ? ` ${o.value}` : ''}`;
}

/** "clonecast CMD --help"; all is every command, to name CMD's subcommands. */
export function commandHelp(c: Command, all: readonly Command[] = []): string {
  const entries: [string, string][] = Object.entries(c.options).map(([name, o]) => [optionLeft(name, o), `${o.help}${o.default !== undefined ? ` (default: ${o.default})` : ''}`]);
  entries.push(['-h, --help', 'Print this text.']);
  const col = Math.min(28, Math.max(...entries.map(([l]) => l.length)) + 2);
  const lines = [`usage: clonecast ${c.name}${c.usage ? ` ${c.usage}` : ''}${Object.keys(c.options).length > 0 && !c.usage.endsWith('[options]') ? ' [options]' : ''}`, '', wrap(c.summary, 0, 0)];
  if (c.details !== undefined) lines.push('', ...c.details.map((d) => wrap(d, 0, 0)));
  lines.push('', 'options:');
  for (const [l, h] of entries) {
    if (l.length + 2 > col) lines.push(`  ${l}`, `  ${' '.repeat(col)}${wrap(h, col + 2, col + 2)}`);
    else lines.push(`  ${l.padEnd(col)}${wrap(h, col + 2, col + 2)}`);
  }
  const subs = all.filter((x) => x.name.startsWith(`${c.name} `) && !x.hidden);
  if (subs.length > 0) {
    lines.push('', 'subcommands (each has its own --help):');
    for (const x of subs) lines.push(`  ${x.name}${x.usage ? ` ${x.usage}` : ''}`, `      ${wrap(x.summary, 6, 6)}`);
  }
  // A text built from the arguments is shown with their names (DEST, DISK).
  const ctrlC = typeof c.interrupted === 'string' ? c.interrupted : c.interrupted({ positionals: [], str: () => undefined } as unknown as Context);
  lines.push('', wrap(`Ctrl-C: ${ctrlC}.`, 0, 0));
  lines.push('');
  return lines.join('\n');
}
