import { UsageError } from './run-cli';

export interface ParsedFlags {
  values: Map<string, string>;
  switches: Set<string>;
}

/** Operator commands' flags: `--name value` or `--name=value` for the listed value flags, bare switches; anything else is refused. */
export function parseFlags(args: string[], valueFlags: string[], switchFlags: string[]): ParsedFlags {
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
