/** Flags for the benchmark scripts: `--name value` or `--name=value`, and bare switches. */
export class BenchFlags {
  private readonly values = new Map<string, string>();
  private readonly switches = new Set<string>();

  constructor(
    argv: string[],
    private readonly usage: string,
  ) {
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i];
      if (arg === '--help' || arg === '-h') {
        process.stdout.write(`${usage}\n`);
        process.exit(0);
      }
      if (!arg.startsWith('--')) this.fail(`unexpected argument "${arg}"`);
      const [name, inline] = arg.slice(2).split(/=(.*)/s, 2);
      if (inline !== undefined) this.values.set(name, inline);
      else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) this.values.set(name, argv[++i]);
      else this.switches.add(name);
    }
    // The usage text is the list of flags: a misspelt or unsupported one must not be silently ignored.
    const known = new Set((usage.match(/--[a-z][a-z0-9-]*/g) ?? []).map((flag) => flag.slice(2)));
    for (const name of [...this.values.keys(), ...this.switches]) {
      if (!known.has(name)) this.fail(`unknown flag --${name}`);
    }
  }

  has(name: string): boolean {
    return this.switches.has(name) || this.values.has(name);
  }

  int(name: string, fallback: number, min = 1): number {
    const raw = this.values.get(name);
    if (raw === undefined) {
      if (this.switches.has(name)) this.fail(`--${name} needs a number`);
      return fallback;
    }
    const value = Number(raw.replace(/_/g, ''));
    if (!Number.isInteger(value) || value < min) this.fail(`--${name} must be a whole number >= ${min}, got "${raw}"`);
    return value;
  }

  /** One of `choices`, or undefined when the flag is absent. */
  value<T extends string>(name: string, choices: readonly T[]): T | undefined {
    const raw = this.values.get(name);
    if (raw === undefined) return undefined;
    if (!choices.includes(raw as T)) this.fail(`--${name} must be one of ${choices.join(', ')}, got "${raw}"`);
    return raw as T;
  }

  /** Comma-separated names, each one of `choices`; `fallback` when the flag is absent. */
  names<T extends string>(name: string, choices: readonly T[], fallback: T[]): T[] {
    const raw = this.values.get(name);
    if (raw === undefined) return fallback;
    const values = raw.split(',').map((s) => s.trim());
    const wrong = values.filter((v) => !choices.includes(v as T));
    if (wrong.length || values.length === 0) this.fail(`--${name} takes a comma-separated list of ${choices.join(', ')}, got "${raw}"`);
    return values as T[];
  }

  list(name: string, fallback: number[]): number[] {
    const raw = this.values.get(name);
    if (raw === undefined) return fallback;
    const values = raw.split(',').map((s) => Number(s.trim()));
    if (values.some((v) => !Number.isInteger(v) || v < 1)) this.fail(`--${name} must be comma-separated whole numbers, got "${raw}"`);
    return values;
  }

  private fail(message: string): never {
    process.stderr.write(`${message}\n\n${this.usage}\n`);
    process.exit(2);
  }
}
