import { relative, resolve } from 'node:path';
import { UsageError } from './run-cli';

const ROOT = resolve(__dirname, '../..');

export interface ParsedFlags {
  values: Map<string, string>;
  switches: Set<string>;
}

/**
 * Operator commands' flags: `--name value` or `--name=value` for the listed value flags, bare switches; anything else is refused.
 * So are flags npm kept for itself (see refuseFlagsNpmTook).
 */
export function parseFlags(
  args: string[],
  valueFlags: string[],
  switchFlags: string[],
  env: NodeJS.ProcessEnv = process.env,
  entry: string | undefined = process.argv[1],
): ParsedFlags {
  refuseFlagsNpmTook(args, [...valueFlags, ...switchFlags], env, entry);
  const values = new Map<string, string>();
  const switches = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const eq = arg.indexOf('=');
    const [name, inline] = arg.startsWith('--') && eq > 0 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg, undefined];
    if (switchFlags.includes(name) && inline === undefined) {
      switches.add(name);
    } else if (valueFlags.includes(name)) {
      const value = inline ?? args[++i];
      if (value === undefined || value === '' || (inline === undefined && value.startsWith('--'))) throw new UsageError(`${name} needs a value`);
      if (values.has(name)) throw new UsageError(`${name} given twice`);
      values.set(name, value);
    } else {
      throw new UsageError(`unknown option "${arg}"`);
    }
  }
  return { values, switches };
}

export function positiveInt(flags: ParsedFlags, name: string, fallback: number): number {
  const text = flags.values.get(name);
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`${name} must be a positive whole number, got "${text}"`);
  }
  return Number(text);
}

/**
 * `npm run backfill --dry-run`, without the `--`, gives npm the flag: it sets npm_config_dry_run in the
 * script's environment and passes the command nothing, which then copied the whole history it was told not
 * to touch (`--project` or `--since` left out the same way widened the scope to everything). A flag of the
 * command's that npm took, and that the command was not also given, is refused, naming the fix.
 */
function refuseFlagsNpmTook(args: string[], flags: string[], env: NodeJS.ProcessEnv, entry: string | undefined): void {
  const script = env.npm_lifecycle_event;
  // Only the command npm ran: a process it started in turn (the local ClickHouse under `npm start`, load's
  // verify, the specs' commands under `npm test`) inherits the npm_config_* of a script that is not its own.
  if (script === undefined || entry === undefined || !env.npm_lifecycle_script?.includes(relative(ROOT, entry))) return;
  const given = new Set(args.map((arg) => arg.split('=', 1)[0]));
  const taken = flags.filter((flag) => !given.has(flag) && env[`npm_config_${flag.slice(2).replace(/-/g, '_')}`] !== undefined);
  if (taken.length === 0) return;
  throw new UsageError(
    `npm kept ${taken.join(', ')} for itself: \`npm run\` passes a command only what follows "--". ` +
      `Run it as \`npm run ${script} -- <options>\`; nothing was done`,
  );
}
