import { Kysely, Transaction } from 'kysely';
import { currentWriteScope, runInWriteScope, WriteScope } from '../write-scope';
import { DB } from './database';
import { leavesCommitUnknown } from './unavailable';

/**
 * A DAO write's transaction: the ambient WriteScope's when the write runs
 * inside one (it then commits with the scope's other writes), else one of
 * its own.
 */
export function inTransaction<T>(db: Kysely<DB>, work: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
  const scope = currentWriteScope();
  return scope ? work(scope.transaction as Transaction<DB>) : db.transaction().execute(work);
}

/**
 * Runs `work` as one transaction that the DAO writes inside it join (see
 * WriteScope), and tells the scope's listeners how it ended: committed,
 * rolled back, or a COMMIT that failed without saying whether it landed.
 */
export async function inOneTransaction<T>(db: Kysely<DB>, work: () => Promise<T>): Promise<T> {
  // Already inside one: the work joins it (a second transaction would commit apart, and wait on its locks).
  if (currentWriteScope()) return work();
  let scope: WriteScope | undefined;
  let workDone = false;
  let result: T;
  try {
    result = await db.transaction().execute(async (trx) => {
      scope = new WriteScope(trx);
      const value = await runInWriteScope(scope, work);
      workDone = true;
      return value;
    });
  } catch (error) {
    // A failure inside the work rolled the transaction back; only one at its COMMIT leaves the outcome open.
    scope?.end({ committed: false, unknown: workDone && leavesCommitUnknown(error), error });
    throw error;
  }
  scope?.end({ committed: true });
  return result;
}
