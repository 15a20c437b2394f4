import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream';
import { Kysely } from 'kysely';
import { Pool } from 'pg';
import { DB } from '../postgres/database';
import { BackfillCheckpointsRepository, Checkpoint, RunLock } from './backfill-checkpoints.repository';
import { ClickHouseHistory, RowSourceError } from './clickhouse-history';
import { errorText } from '../../error-text';
import { historyOf } from './history-entities';
import { Entity, HistoryScope, runKeyOf } from './history-scope';
import { CompactJsonbColumns } from './copy/compact-jsonb-columns';
import { copyOut } from './copy/postgres-copy-out';
import { KeysetReader } from './keyset-reader';
import { HistoryProgress, silentProgress } from './progress';

/** A batch's range gained as many rows as it had while it was copied; the copy stops before it. */
export class BatchGrewError extends Error {
  override name = 'BatchGrewError';
  constructor(entity: string, counted: number, streamed: number) {
    super(
      `a batch of ${entity} grew from ${counted} to at least ${streamed} rows while it was copied (writes committing into ` +
        'the history being copied); nothing after the last checkpoint is skipped: run it again to resume',
    );
  }
}

/** Postgres as the backfill reads it: queries through Kysely, COPY on the pool's connections. */
export interface HistoryDatabase {
  db: Kysely<DB>;
  pool: Pool;
}

export interface BackfillOptions {
  /** Most rows per batch: one COPY out of Postgres, one insert into ClickHouse, one checkpoint. */
  batchRows: number;
  /** Most bytes per batch, as Postgres stores the rows (pg_column_size; compressed values count compressed). */
  batchBytes: number;
  /** Start over with a new upper bound instead of resuming. */
  restart?: boolean;
}

export const DEFAULT_BACKFILL_OPTIONS: BackfillOptions = {
  // Each insert is a part in ClickHouse (merged later, at a CPU cost) and a checkpoint here: 50,000
  // ~1 KB rows stream through in about a second, and a resume re-copies at most that.
  batchRows: 50_000,
  batchBytes: 64 * 1024 * 1024,
};

export interface BackfillResult {
  entity: Entity;
  runKey: string;
  /** `already-complete`: a finished run of the same scope; nothing was copied. */
  outcome: 'complete' | 'already-complete';
  /** Rows this invocation copied. */
  rowsCopied: number;
  /** Rows the run has copied over all its invocations. */
  totalRowsCopied: number;
  batches: number;
  durationMs: number;
  rowsPerSecond: number;
  /** Whether this invocation continued an unfinished run, and from which cursor (null: before its first batch). */
  resumed: boolean;
  resumedFrom: string[] | null;
  upperBound: string;
}

export interface DryRunResult {
  entity: Entity;
  runKey: string;
  /** Rows a run with the same options would copy now. */
  rows: number;
  /** What that run would do with its checkpoint. */
  checkpoint: 'new' | 'resume' | 'restart' | 'already-complete';
  /** For a finished run: the rows `--restart` would copy now. */
  rowsOnRestart?: number;
  /**
   * The ClickHouse table (its UUID) the checkpoint copied into, for a resume or a finished run. The dry run
   * does not ask ClickHouse: a table made again since would have the run start over instead.
   */
  target?: string;
}

/**
 * Copies Postgres history into the ClickHouse mirror, in batches in keyset
 * order up to an upper bound fixed at the run's start (rows created later
 * are the live mirror's). Each row is copied at the version a live write
 * gives it, so copying while the mirror runs is safe: ClickHouse keeps the
 * highest version of each row, and a later update or delete always has a
 * higher one. A checkpoint records each batch ClickHouse accepted.
 *
 * The rows never become JavaScript objects: Postgres prints each batch in
 * the ClickHouse columns (COPY ... TO STDOUT, see HistoryEntity.copy) and it
 * streams into a TabSeparated insert, with only the jsonb fields made
 * compact on the way. Mapping each row in this process cost more CPU than
 * Postgres and ClickHouse together (BENCHMARKS.md, backfill). The next batch
 * starts once Postgres has sent this one, while ClickHouse still writes it.
 */
export class Backfill {
  private readonly checkpoints: BackfillCheckpointsRepository;
  private readonly db: Kysely<DB>;

  constructor(
    private readonly postgres: HistoryDatabase,
    private readonly clickhouse: ClickHouseHistory,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.db = postgres.db;
    this.checkpoints = new BackfillCheckpointsRepository(postgres.db);
  }

  /**
   * Starts the scope's run over (a new upper bound, no cursor, nothing
   * copied yet) without copying. `backfill --restart` does this for every
   * entity before it copies any, so a restart cut short resumes as one run
   * (the command without --restart) whichever entity it had reached; else
   * the entities after it would still read as complete from before.
   */
  /**
   * Starts these scopes' runs over (their next run copies from the first
   * row, under a new bound), holding every one's run lock before it resets
   * any: a run in progress for one refuses the whole restart, and no other
   * scope has lost its resume point to it.
   */
  async restart(scopes: HistoryScope[]): Promise<void> {
    const holding = async (from: number): Promise<void> => {
      if (from < scopes.length) return this.checkpoints.withRunLock(runKeyOf(scopes[from]), () => holding(from + 1));
      for (const scope of scopes) await this.checkpoints.start(runKeyOf(scope), scope, await this.targetOf(scope));
    };
    await holding(0);
  }

  async run(scope: HistoryScope, options: BackfillOptions = DEFAULT_BACKFILL_OPTIONS, progress: HistoryProgress = silentProgress): Promise<BackfillResult> {
    const runKey = runKeyOf(scope);
    return this.checkpoints.withRunLock(runKey, async (lock) => {
      const startedAt = Date.now();
      const target = await this.targetOf(scope);
      const found = await this.checkpoints.find(runKey);
      const existing = found && this.intoSameTable(found, target) ? found : undefined;
      if (existing?.status === 'complete' && !options.restart) {
        return this.result(existing, 'already-complete', { rows: 0, batches: 0, startedAt, resumed: false, resumedFrom: null });
      }
      const resumed = existing?.status === 'running' && !options.restart;
      const checkpoint = resumed ? existing : await this.checkpoints.start(runKey, scope, target);
      // Without a cursor (just started over by restart(), or cut short before its first checkpoint) it begins at the first row.
      if (checkpoint.cursor) {
        this.log(
          `backfill ${scope.entity}: resumed run "${runKey}" from cursor ${checkpoint.cursor.join('/')} ` +
            `(${checkpoint.rowsCopied} rows copied before; upper bound ${checkpoint.scope.upperBound})`,
        );
      } else {
        this.log(`backfill ${scope.entity}: started run "${runKey}" (rows created before ${checkpoint.scope.upperBound})`);
      }
      const copied = await this.copy(runKey, checkpoint, lock, options, progress);
      await this.checkpoints.finish(runKey, lock);
      const finished = (await this.checkpoints.find(runKey))!;
      return this.result(finished, 'complete', { ...copied, startedAt, resumed, resumedFrom: resumed ? checkpoint.cursor : null });
    });
  }

  private targetOf(scope: HistoryScope): Promise<string | null> {
    return this.clickhouse.tableIdentity(historyOf(scope.entity).table);
  }

  /**
   * Whether the checkpoint's rows went into the table the run would copy into now. A checkpoint made
   * before the table was made again (dropped and migrated, or CLICKHOUSE_URL pointing at another server)
   * counts rows that table does not hold: resumed, or taken as complete, it left them out for good.
   */
  private intoSameTable(checkpoint: Checkpoint, target: string | null): boolean {
    const before = checkpoint.scope.target;
    // A checkpoint that named no table (an earlier version's, or one into a table without a UUID) is taken as it is;
    // one that named a table is not resumed into a table without one (a database of the Ordinary engine): another table.
    if (before === undefined || before === target) return true;
    this.log(
      `backfill ${checkpoint.scope.entity}: run "${checkpoint.runKey}" copied ${checkpoint.rowsCopied} rows into another ` +
        `ClickHouse table ${historyOf(checkpoint.scope.entity).table} (uuid ${before}; now ${target ?? 'none'}: made again, or another server): starting it over`,
    );
    return false;
  }

  private async copy(
    runKey: string,
    checkpoint: Checkpoint,
    lock: RunLock,
    options: BackfillOptions,
    progress: HistoryProgress,
  ): Promise<{ rows: number; batches: number }> {
    const { scope } = checkpoint;
    const entity = historyOf(scope.entity);
    const reader = new KeysetReader(this.db, entity);
    const upperBound = scope.upperBound;
    const limits = { rows: options.batchRows, bytes: options.batchBytes };
    progress.start(scope.entity, await reader.count(scope, checkpoint.cursor, upperBound));

    let rows = 0;
    let batches = 0;
    let cursor = checkpoint.cursor;
    // The previous batch's insert and checkpoint; each batch's checkpoint waits for it, so checkpoints
    // only ever move forward, and at most two inserts are in flight.
    let landed: Promise<void> = Promise.resolve();
    try {
      for (;;) {
        const end = await reader.bound(scope, cursor, limits, upperBound);
        if (!end) break;
        const from = cursor;
        const copy = reader.copyStatement(scope, from, end, upperBound);
        // Names this batch of this run: a retry, or a resume re-sending a batch that landed just before
        // the process died, is dropped by ClickHouse; --restart has a new bound, so new tokens.
        const token = createHash('sha256').update(JSON.stringify([runKey, upperBound, from, end.last, end.rows])).digest('hex');
        let sent!: () => void;
        const streamed = new Promise<void>((resolve) => (sent = resolve));
        let compacted!: CompactJsonbColumns;
        const insert = this.clickhouse.insertTabSeparated(
          entity.table,
          entity.copy.columns,
          async () => {
            // Postgres failing to open the COPY (no connection, too many clients) is Postgres's failure too: unnamed,
            // the insert's retries read its error as ClickHouse's (a SQLSTATE of digits as a ClickHouse code).
            const out = await copyOut(this.postgres.pool, copy.statement).catch((error: unknown) => {
              throw new RowSourceError(`Postgres failed to start the copy of ${entity.table}: ${errorText(error)}; run it again to resume once it answers`);
            });
            out.once('end', sent);
            compacted = new CompactJsonbColumns(entity.copy.columns.length, entity.copy.jsonColumns);
            // Heard before pipeline hears it: the insert then fails naming Postgres, where the client's
            // rejection with the COPY's own error read as ClickHouse failing (and its code as ClickHouse's).
            out.once('error', (error) => {
              compacted.destroy(new RowSourceError(`Postgres failed during the copy of ${entity.table}: ${errorText(error)}; run it again to resume once it answers`));
            });
            // pipeline, not pipe: a failure on either side (a Postgres error, a bad line, ClickHouse
            // hanging up) destroys both, so the insert fails at once and the COPY's connection is discarded.
            pipeline(out, compacted, () => undefined);
            return compacted;
          },
          token,
        );
        const previous = landed;
        landed = (async () => {
          // Even when this insert fails, the batches before it settle (and check in) first.
          const [inserted, before] = await Promise.allSettled([insert, previous]);
          if (before.status === 'rejected') throw before.reason;
          if (inserted.status === 'rejected') throw inserted.reason;
          // The COPY filled its limit: rows may have been left out before the batch's end (copyStatement),
          // so the checkpoint stays before the batch and a rerun copies it again, as it then stands.
          const copied = compacted.lines;
          if (copied >= copy.limit) throw new BatchGrewError(scope.entity, end.rows, copied);
          await this.checkpoints.advance(runKey, end.last, copied, lock);
          rows += copied;
          batches += 1;
          progress.advance(copied, end.last);
        })();
        landed.catch(() => undefined);
        // Postgres has sent this batch (or the insert failed); once the one before has landed, go on.
        await Promise.race([streamed, landed]);
        await previous;
        cursor = end.last;
      }
      await landed;
    } finally {
      // Nothing is left writing after a failure: the error is the caller's, the checkpoint stays where it was.
      await landed.catch(() => undefined);
      progress.stop();
    }
    return { rows, batches };
  }

  private result(
    checkpoint: Checkpoint,
    outcome: BackfillResult['outcome'],
    run: { rows: number; batches: number; startedAt: number; resumed: boolean; resumedFrom: string[] | null },
  ): BackfillResult {
    const durationMs = Date.now() - run.startedAt;
    return {
      entity: checkpoint.scope.entity,
      runKey: checkpoint.runKey,
      outcome,
      rowsCopied: run.rows,
      totalRowsCopied: checkpoint.rowsCopied,
      batches: run.batches,
      durationMs,
      rowsPerSecond: durationMs > 0 ? Math.round((run.rows * 1000) / durationMs) : 0,
      resumed: run.resumed,
      resumedFrom: run.resumedFrom,
      upperBound: checkpoint.scope.upperBound,
    };
  }
}

/** What `Backfill.run` would copy, without writing anything (not even a checkpoint) or touching ClickHouse. */
export async function planBackfill(db: Kysely<DB>, scope: HistoryScope, options: Pick<BackfillOptions, 'restart'> = {}): Promise<DryRunResult> {
  const runKey = runKeyOf(scope);
  const reader = new KeysetReader(db, historyOf(scope.entity));
  const existing = await new BackfillCheckpointsRepository(db).find(runKey);
  if (existing && !options.restart) {
    const { target } = existing.scope;
    if (existing.status === 'complete') {
      return { entity: scope.entity, runKey, rows: 0, checkpoint: 'already-complete', rowsOnRestart: await reader.count(scope, null), target };
    }
    const rows = await reader.count(scope, existing.cursor, existing.scope.upperBound);
    return { entity: scope.entity, runKey, rows, checkpoint: 'resume', target };
  }
  // A new run's bound would be now(); rows the count cannot see yet are the live mirror's.
  return { entity: scope.entity, runKey, rows: await reader.count(scope, null), checkpoint: existing ? 'restart' : 'new' };
}

