import { Kysely, sql } from 'kysely';
import { DB } from '../postgres/database';
import { HistoryScope } from './history-scope';

export type CheckpointStatus = 'running' | 'complete';

/** What a run records in its checkpoint's scope: the filters and the bound fixed at its start. */
export interface CheckpointScope extends HistoryScope {
  /** Postgres now() when the run started: rows created later are the live mirror's. */
  upperBound: string;
  /**
   * The ClickHouse table the run copies into (ClickHouseHistory.tableIdentity); absent in checkpoints of
   * earlier versions, and where the table has no identity. A run is only resumed into the same table.
   */
  target?: string;
}

/**
 * The run key of every run that resets keys (KeyReplay): `backfill --gaps`
 * and `verify --repair`. A reset reads a key's tombstones from ClickHouse,
 * removes the key's rows and writes the tombstones back; a second reset of
 * the same key in between reads none, and removes the first one's when it
 * removes the key again. So one such run at a time, whichever command.
 */
export const KEY_REPLAY_RUN = 'gaps';

/** Another process is running the same scope right now. */
export class RunInProgressError extends Error {
  override name = 'RunInProgressError';
}

/** The session holding a run's lock. */
export interface RunLock {
  /** The advisory lock's name (see withRunLock). */
  name: string;
  /** The Postgres session that holds it. */
  pid: number;
}

export interface Checkpoint {
  runKey: string;
  scope: CheckpointScope;
  /** The keyset tuple of the last row ClickHouse accepted, or null before the first batch. */
  cursor: string[] | null;
  rowsCopied: number;
  status: CheckpointStatus;
  startedAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

/**
 * One row per backfill run in `backfill_checkpoints`. Every write is a single
 * autocommitted statement on one row, so no lock outlives it, and the copier
 * never waits on a lock it holds itself.
 */
export class BackfillCheckpointsRepository {
  constructor(private readonly db: Kysely<DB>) {}

  async find(runKey: string): Promise<Checkpoint | undefined> {
    const row = await this.db.selectFrom('backfill_checkpoints').selectAll().where('run_key', '=', runKey).executeTakeFirst();
    if (!row) return undefined;
    return {
      runKey: row.run_key,
      scope: row.scope as CheckpointScope,
      cursor: (row.cursor as string[] | null) ?? null,
      rowsCopied: Number(row.rows_copied),
      status: row.status as CheckpointStatus,
      startedAt: row.started_at,
      updatedAt: row.updated_at,
      finishedAt: row.finished_at,
    };
  }

  /** Starts (or restarts) a run from the beginning with a new upper bound, Postgres's now(), copying into `target`. */
  async start(runKey: string, scope: HistoryScope, target: string | null): Promise<Checkpoint> {
    const { rows } = await sql<{ now: string }>`select now() as now`.execute(this.db);
    const full: CheckpointScope = { ...scope, upperBound: rows[0].now, ...(target === null ? {} : { target }) };
    await this.db
      .insertInto('backfill_checkpoints')
      .values({ run_key: runKey, entity: scope.entity, scope: JSON.stringify(full), cursor: null, rows_copied: 0, status: 'running' })
      .onConflict((oc) =>
        oc.column('run_key').doUpdateSet({
          scope: JSON.stringify(full),
          cursor: null,
          rows_copied: 0,
          status: 'running',
          started_at: sql<string>`now()`,
          updated_at: sql<string>`now()`,
          finished_at: null,
        }),
      )
      .execute();
    return (await this.find(runKey))!;
  }

  /**
   * After ClickHouse accepted a batch: its last key becomes the resume point.
   * Only while the run's lock session still holds that lock (its own, not any advisory lock the pid,
   * perhaps reused by a new session, may hold): a session that
   * was dropped (idle timeout, network) released it, and another run may
   * have started since.
   */
  async advance(runKey: string, cursor: string[], rows: number, lock: RunLock): Promise<void> {
    const result = await this.db
      .updateTable('backfill_checkpoints')
      .set({
        cursor: JSON.stringify(cursor),
        rows_copied: sql<string>`rows_copied + ${rows}`,
        updated_at: sql<string>`now()`,
      })
      .where('run_key', '=', runKey)
      .where(stillHeld(lock))
      .executeTakeFirst();
    if (result.numUpdatedRows === 0n) throw lostLock(runKey);
  }

  /** Throws lostLock unless the run's lock session still holds its lock (as advance() asks it). */
  async assertHeld(runKey: string, lock: RunLock): Promise<void> {
    const { rows } = await sql<{ held: boolean }>`select ${stillHeld(lock)} as held`.execute(this.db);
    if (!rows[0].held) throw lostLock(runKey);
  }

  /**
   * The run copied its whole range: marked complete, under the same condition as advance(). A run whose
   * lock session ended may have been started over since (`--restart`); marking that one complete would
   * make the next run say "nothing to do" over a range it has not copied.
   */
  async finish(runKey: string, lock: RunLock): Promise<void> {
    const result = await this.db
      .updateTable('backfill_checkpoints')
      .set({ status: 'complete', updated_at: sql<string>`now()`, finished_at: sql<string>`now()` })
      .where('run_key', '=', runKey)
      .where(stillHeld(lock))
      .executeTakeFirst();
    if (result.numUpdatedRows === 0n) throw lostLock(runKey);
  }

  /**
   * Runs `work` while holding a session advisory lock named after the run, on
   * a connection of its own that does nothing else: a second process with the
   * same run key fails at once, and a killed process's lock goes with its
   * session. The lock guards no table, so nothing the copier does waits on it.
   */
  async withRunLock<T>(runKey: string, work: (lock: RunLock) => Promise<T>): Promise<T> {
    const name = `backfill ${runKey}`;
    return this.db.connection().execute(async (session) => {
      // This session runs nothing else while the run goes on: a role's or database's idle_session_timeout would end
      // it, and the run would stop as having lost its lock (every rerun again, past that long). Postgres 14 added
      // the setting; an older server does not know it, and has no such timeout.
      await sql`select set_config('idle_session_timeout', '0', false)`.execute(session).catch((error: { code?: string }) => {
        if (error?.code !== '42704') throw error;
      });
      const { rows } = await sql<{ locked: boolean; pid: number }>`
        select pg_try_advisory_lock(hashtextextended(${name}, 0)) as locked, pg_backend_pid() as pid`.execute(session);
      if (!rows[0].locked) {
        const run =
          runKey === KEY_REPLAY_RUN
            ? 'another run that resets keys (`backfill --gaps` or `verify --repair`) is running'
            : `another backfill of the same scope is running (run key "${runKey}")`;
        throw new RunInProgressError(`${run}: ${await describeHolder(session, name)}`);
      }
      try {
        return await work({ name, pid: rows[0].pid });
      } finally {
        await sql`select pg_advisory_unlock(hashtextextended(${name}, 0))`.execute(session).catch(() => undefined);
      }
    });
  }
}

/** The run's lock session still holds its lock: not ended, and so not replaced by another run's. */
const stillHeld = (lock: RunLock) => sql<boolean>`exists (select 1 from pg_locks l where ${isRunLock(lock.name)} and l.pid = ${lock.pid})`;

const lostLock = (runKey: string) =>
  new RunInProgressError(
    runKey === KEY_REPLAY_RUN
      ? 'this run resetting keys lost its lock (its Postgres session ended; another may have started), so it stopped: run the same command again'
      : `backfill run "${runKey}" lost its lock (its Postgres session ended); run it again to resume`,
  );

/**
 * A condition on `pg_locks l`: the row is the granted advisory lock named `name`
 * (withRunLock's key), not just any advisory lock. pg_locks splits a bigint
 * advisory key into classid (high 32 bits) and objid (low 32 bits). Advisory
 * locks belong to a database: the same run key locked in another database on
 * this server is another run.
 */
function isRunLock(name: string) {
  return sql<boolean>`l.locktype = 'advisory' and l.granted and l.objsubid = 1
      and l.database = (select oid from pg_database where datname = current_database())
      and l.classid = ((hashtextextended(${name}, 0) >> 32) & 4294967295)::oid
      and l.objid = (hashtextextended(${name}, 0) & 4294967295)::oid`;
}

/**
 * Who holds a run's lock, and what to do: a run whose process died with its
 * host keeps the lock until Postgres notices the session is gone (TCP
 * keepalive, possibly hours), and only the session's pid says which to end.
 */
async function describeHolder(session: Kysely<DB>, name: string): Promise<string> {
  const { rows } = await sql<{ pid: number; application_name: string; client: string | null; since: string }>`
    select a.pid, a.application_name, host(a.client_addr) as client, a.backend_start as since
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where ${isRunLock(name)}`
    .execute(session)
    .catch(() => ({ rows: [] }));
  const holder = rows[0];
  if (!holder) return 'wait for it to finish or stop it first';
  const who = [holder.application_name && `application "${holder.application_name}"`, holder.client ? `from ${holder.client}` : 'over a local socket', `connected since ${holder.since}`]
    .filter(Boolean)
    .join(', ');
  return (
    `its Postgres session (pid ${holder.pid}; ${who}) holds the run's lock. Wait for it to finish, or stop it; ` +
    `if its process is gone (its host died), end the session: select pg_terminate_backend(${holder.pid})`
  );
}
