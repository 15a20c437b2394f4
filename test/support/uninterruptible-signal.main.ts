/**
 * A command shaped like verify --repair, for uninterruptible.spec: its signal
 * handler is exitOnSignal's, and it runs one uninterruptible stretch that
 * ends when stdin closes, then says so on stdout.
 */
import { exitOnSignal } from '../../scripts/cli/run-cli';
import { uninterruptibly } from '../../src/dbs/backfill/uninterruptible';

exitOnSignal('interrupted', () => process.stdout.write('stopped\n'));
void uninterruptibly(async () => {
  process.stdout.write('inside\n');
  await new Promise<void>((done) => process.stdin.on('end', done).resume());
  process.stdout.write('finished the stretch\n');
});
