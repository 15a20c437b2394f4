import { ConfigError } from '../../src/config/app-config';
import { deferInterrupt, holdingTombstones, LOST_IN_A_STRETCH, tombstonesWereLost } from '../../src/dbs/backfill/uninterruptible';
import { errorText } from '../../src/error-text';

/** A mistake in how the command was called: print usage, exit 2. */
export class UsageError extends Error {}

/**
 * The shape every operator command shares: parse, run, print errors in one
 * line an operator can act on, and exit non-zero on failure. A command whose
 * finding is itself a failure for a script (`migrate status` with migrations
 * pending) resolves to its exit code instead of throwing, so its output stays
 * a report rather than an error line.
 */
export function runCli(usage: string, run: (args: string[], log: (message: string) => void) => Promise<void | number>): void {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  const log = (message: string) => process.stderr.write(`${message}\n`);
  run(args, log).then(
    (code) => process.exit(code ?? 0),
    (error: unknown) => {
      if (error instanceof UsageError) {
        process.stderr.write(`error: ${error.message}\n\n${usage}\n`);
        process.exit(2);
      }
      if (error instanceof ConfigError) {
        process.stderr.write(`${error.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`error: ${errorText(error)}\n`);
      process.exit(1);
    },
  );
}

/** What a shell reports for a process these signals end (128 + the signal's number), so callers can tell which it was. */
export const SIGNAL_EXIT_CODES = { SIGINT: 130, SIGTERM: 143 } as const;

/**
 * One Ctrl-C under `npm run` arrives twice: from the terminal, and forwarded by npm. The same signal again
 * within this window of the first is that copy, not a second request to stop. (The API's own shutdown, in
 * src/main.ts, ignores every repeat: its drain is bounded already.)
 */
export const NPM_REPEAT_WINDOW_MS = 1_000;

/** Whether `signal` now is npm's copy of `first` (see NPM_REPEAT_WINDOW_MS). */
export function isNpmRepeat(first: { signal: string; at: number }, signal: string, windowMs = NPM_REPEAT_WINDOW_MS): boolean {
  return signal === first.signal && Date.now() - first.at <= windowMs;
}

/**
 * Ends a long command on Ctrl-C or SIGTERM with `message` on a line of its
 * own (a function is asked at the signal, for a hint that depends on how far the command got). `stop` runs first: a progress bar keeps the terminal's cursor hidden
 * and its line wrap off until it is stopped, and exiting skips every finally.
 */
export function exitOnSignal(
  message: string | (() => string),
  stop: () => void,
  /**
   * `describeFailure`: what the command makes of an error before printing it (it names the server that failed), as
   * its own error path would. `afterLoss`: what the command adds to the advice when an exit comes with tombstones
   * lost or at risk (backfill --gaps: to replay the gaps still open).
   */
  options: { repeatWindowMs?: number; describeFailure?: (error: unknown) => unknown; afterLoss?: string } = {},
): void {
  // On a terminal, Ctrl-C's echoed "^C" may sit at the start of the line: write over it.
  const say = (text: string) => process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[2K' : ''}${text}\n`);
  /** The signal whose exit waits for a stretch to end (uninterruptible.ts), and when it came. */
  let first: { signal: string; at: number } | undefined;
  const onSignal = (signal: keyof typeof SIGNAL_EXIT_CODES) => {
    const exit = (failure?: unknown) => {
      stop();
      // Tombstones held now, or lost earlier: whatever ends the command adds its advice for them.
      const held = holdingTombstones();
      const atRisk = held || tombstonesWereLost();
      const afterLoss = atRisk ? (options.afterLoss ?? '') : '';
      // The stretch the exit waited for failed: the command has failed, and says so as it would have, not with
      // the interrupt's hint (verify's "safe to repeat" after an error that says tombstones may be lost).
      if (failure !== undefined) {
        say(`error: ${errorText(options.describeFailure ? options.describeFailure(failure) : failure)}${afterLoss}`);
        process.exit(1);
      }
      // A second signal ends a stretch part-way: the tombstones it held are lost, and the interrupt's hint (verify's
      // "safe to repeat") would say otherwise. A stretch that had not begun removing keys yet holds none. Or some
      // were lost already, and the error saying so had yet to be printed.
      if (atRisk) {
        say(`error: ${held ? 'stopped part-way through writing back' : 'interrupted after losing'} ${LOST_IN_A_STRETCH}${afterLoss}`);
        process.exit(1);
      }
      say(typeof message === 'function' ? message() : message);
      process.exit(SIGNAL_EXIT_CODES[signal]);
    };
    if (first !== undefined) {
      // Anything but npm's copy of the first exits at once, even inside a stretch that must finish (uninterruptible.ts).
      if (!isNpmRepeat(first, signal, options.repeatWindowMs)) exit();
      return;
    }
    if (!deferInterrupt(exit)) return exit();
    first = { signal, at: Date.now() };
    say(`${signal} received: finishing writing back what only this process holds, then stopping (${signal} again after a second stops at once, and may lose it)`);
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, onSignal);
}
