/**
 * A command shaped like verify --repair, for uninterruptible.spec: run by
 * runCli, its signal handler is exitOnSignal's, and it runs one
 * uninterruptible stretch that ends when stdin closes, then says so on
 * stdout. The stretch holds tombstones (holdTombstones) throughout; the
 * argument picks another course:
 * - `not-holding`: it holds none;
 * - `fail`: it then fails (its error is described as the commands describe
 *   theirs);
 * - `lose`: it then fails having lost the tombstones (tombstonesLost);
 * - `lost-closing`: it loses them at once, and the command then closes its
 *   servers (says "closing", waits for stdin to close) before its error is
 *   printed.
 * AFTER_LOSS is what the command adds to the loss advice. REPEAT_WINDOW_MS
 * widens the window in which a repeated signal counts as the same one, so a
 * loaded machine's delays do not decide the spec.
 */
import { exitOnSignal, runCli } from '../../scripts/cli/run-cli';
import { holdTombstones, tombstonesLost, uninterruptibly } from '../../src/dbs/backfill/uninterruptible';

const stdinClosed = new Promise<void>((done) => process.stdin.on('end', done).resume());

runCli('usage: uninterruptible-signal [not-holding|fail|lose|lost-closing]', async (args) => {
  const course = args[0];
  const repeatWindowMs = process.env.REPEAT_WINDOW_MS ? Number(process.env.REPEAT_WINDOW_MS) : undefined;
  // As backfill and verify name the server that failed: the failure is described before it is printed.
  const describeFailure = (error: unknown) => new Error(`the server failed: ${(error as Error).message}`);
  exitOnSignal('interrupted', () => process.stdout.write('stopped\n'), { repeatWindowMs, describeFailure, afterLoss: process.env.AFTER_LOSS });
  const lostFailure = () => {
    tombstonesLost();
    return new Error('the write-back failed: tombstones lost');
  };
  try {
    await uninterruptibly(async () => {
      const release = course === 'not-holding' ? () => undefined : holdTombstones();
      try {
        process.stdout.write('inside\n');
        if (course === 'lost-closing') throw lostFailure();
        await stdinClosed;
        if (course === 'fail') throw new Error('the write-back failed: tombstones may be missing');
        if (course === 'lose') throw lostFailure();
        process.stdout.write('finished the stretch\n');
      } finally {
        release();
      }
    });
  } catch (error) {
    if (course !== 'lost-closing') throw error;
    process.stdout.write('closing\n');
    await stdinClosed;
    throw error;
  }
});
