import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * Several DAO writes that commit together, in one transaction: an OTLP
 * export's spans and nodes, so an export that fails stores neither. A write
 * made inside a scope joins its transaction rather than opening one of its
 * own (see inTransaction, src/dbs/postgres/transactions.ts), and what must
 * wait for the commit (the mirror's hand-over of committed rows) waits for
 * the scope's, and hears how it ended.
 *
 * Inside a scope, a write that fails must fail the scope: caught and gone
 * past, its rows would stay in the transaction (it no longer rolls back on
 * its own) and never reach the mirror. Reads are not scoped: they run on
 * connections of their own and do not see the scope's uncommitted writes.
 */
export class WriteScope {
  private readonly listeners: Array<(outcome: ScopeOutcome) => void> = [];

  constructor(readonly transaction: unknown) {}

  /** `listener` runs once the scope has ended. */
  onEnd(listener: (outcome: ScopeOutcome) => void): void {
    this.listeners.push(listener);
  }

  /** Every listener runs, whatever another throws; the first fault is thrown after them (a bug, not an outcome). */
  end(outcome: ScopeOutcome): void {
    let fault: { error: unknown } | null = null;
    for (const listener of this.listeners.splice(0)) {
      try {
        listener(outcome);
      } catch (error) {
        fault ??= { error };
      }
    }
    if (fault) throw fault.error;
  }
}

/**
 * How a scope ended: committed; or not, in which case `unknown` says the
 * COMMIT itself failed without saying whether it landed (leavesCommitUnknown).
 */
export type ScopeOutcome = { committed: true } | { committed: false; unknown: boolean; error: unknown };

const scopes = new AsyncLocalStorage<WriteScope>();

/** The scope the running code is inside, if any. */
export function currentWriteScope(): WriteScope | undefined {
  return scopes.getStore();
}

export function runInWriteScope<T>(scope: WriteScope, work: () => Promise<T>): Promise<T> {
  return scopes.run(scope, work);
}

/** Runs `work` in one transaction that every DAO write inside it joins: all of them commit, or none. */
export type OneTransaction = <T>(work: () => Promise<T>) => Promise<T>;
export const ONE_TRANSACTION = Symbol('ONE_TRANSACTION');
