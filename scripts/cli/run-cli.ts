import { ConfigError } from '../../src/config/app-config';

/** A mistake in how the command was called: print usage, exit 2. */
export class UsageError extends Error {}

/**
 * The shape every operator command shares: parse, run, print errors in one
 * line an operator can act on, and exit non-zero on failure.
 */
export function runCli(usage: string, run: (args: string[], log: (message: string) => void) => Promise<void>): void {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  const log = (message: string) => process.stderr.write(`${message}\n`);
  run(args, log).then(
    () => process.exit(0),
    (error: unknown) => {
      if (error instanceof UsageError) {
        process.stderr.write(`error: ${error.message}\n\n${usage}\n`);
        process.exit(2);
      }
      if (error instanceof ConfigError) {
        process.stderr.write(`${error.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`error: ${(error as Error)?.message ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
