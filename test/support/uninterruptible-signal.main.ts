/**
 * A command shaped like verify --repair, for uninterruptible.spec: run by
 * runCli, its signal handler is exitOnSignal's, and it runs one
 * uninterruptible stretch that ends when stdin closes, then says so on
 * stdout. The stretch holds tombstones (holdTombstones) throughout, but with
 * the argument `not-holding`, none; with `fail`, the stretch then fails (its
 * error is described as the commands describe theirs). AFTER_LOSS is what
 * the command adds to the loss advice. REPEAT_WINDOW_MS
 * widens the window in which a repeated signal counts as the same one, so a
 * loaded machine's delays do not decide the spec.
 */
import { exitOnSignal, runCli } from '../../scripts/cli/run-cli';
import { holdTombstones, uninterruptibly } from '../../src/dbs/backfill/uninterruptible';

runCli('usage: uninterruptible-signal [fail|not-holding]', async (args) => {
  const repeatWindowMs = process.env.REPEAT_WINDOW_MS ? Number(process.env.REPEAT_WINDOW_MS) : undefined;
  // As backfill and verify name the server that failed: the failure is described before it is printed.
  const describeFailure = (error: unknown) => new Error(`the server failed: ${(error as Error).message}`);
  exitOnSignal('interrupted', () => process.stdout.write('stopped\n'), { repeatWindowMs, describeFailure, afterLoss: process.env.AFTER_LOSS });
  await uninterruptibly(async () => {
    const release = args[0] === 'not-holding' ? () => undefined : holdTombstones();
    try {
      process.stdout.write('inside\n');
      await new Promise<void>((done) => process.stdin.on('end', done).resume());
      if (args[0] === 'fail') throw new Error('the write-back failed: tombstones may be missing');
      process.stdout.write('finished the stretch\n');
    } finally {
      release();
    }
  });
});
