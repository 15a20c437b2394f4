import { createHash } from 'node:crypto';
import { Kysely } from 'kysely';
import { DB } from '../postgres/database';
import { BackfillCheckpointsRepository, Checkpoint, RunLock } from './backfill-checkpoints.repository';
import { ClickHouseHistory } from './clickhouse-history';
import { historyOf } from './history-entities';
import { Entity, HistoryScope, runKeyOf } from './history-scope';
import { KeysetPage, KeysetReader } from './keyset-reader';
import { JsonLinesBody } from './json-lines-body';
import { BackfillProgress, silentProgress } from './progress';

export interface BackfillOptions {
  /** Most rows per ClickHouse insert (and per Postgres page). */
  batchRows: number;
  /** Most bytes of JSONEachRow lines per insert; also bounds a page's stored size. */
  batchBytes: number;
  /** Start over with a new upper bound instead of resuming. */
  restart?: boolean;
}

export const DEFAULT_BACKFILL_OPTIONS: BackfillOptions = {
  // ClickHouse wants inserts of thousands of rows; 5,000 ~1 KB rows is a few MB per request.
  batchRows: 5_000,
  batchBytes: 16 * 1024 * 1024,
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
}

interface Batch {
  body: JsonLinesBody;
  from: string[] | null;
  to: string[];
}

/**
 * Copies Postgres history into the ClickHouse mirror. Each row goes through
 * the table's row mapper at the version a live write gives it, so copying
 * while the mirror runs is safe: ClickHouse keeps the highest version of
 * each row, and a later update or delete always has a higher one. Pages are
 * read in keyset order up to an upper bound fixed at the run's start (rows
 * created later are the live mirror's), the next page is read while the
 * current one is inserted, and a checkpoint records each accepted batch.
 */
export class Backfill {
  private readonly checkpoints: BackfillCheckpointsRepository;

  constructor(
    private readonly db: Kysely<DB>,
    private readonly clickhouse: ClickHouseHistory,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.checkpoints = new BackfillCheckpointsRepository(db);
  }

  async run(scope: HistoryScope, options: BackfillOptions = DEFAULT_BACKFILL_OPTIONS, progress: BackfillProgress = silentProgress): Promise<BackfillResult> {
    const runKey = runKeyOf(scope);
    return this.checkpoints.withRunLock(runKey, async (lock) => {
      const startedAt = Date.now();
      const existing = await this.checkpoints.find(runKey);
      if (existing?.status === 'complete' && !options.restart) {
        this.log(`backfill ${scope.entity}: already complete (run "${runKey}" finished ${existing.finishedAt}, ${existing.rowsCopied} rows); use --restart to copy again`);
        return this.result(existing, 'already-complete', { rows: 0, batches: 0, startedAt, resumed: false, resumedFrom: null });
      }
      const resumed = existing?.status === 'running' && !options.restart;
      const checkpoint = resumed ? existing : await this.checkpoints.start(runKey, scope);
      if (resumed) {
        this.log(
          `backfill ${scope.entity}: resumed run "${runKey}" from ${checkpoint.cursor ? `cursor ${checkpoint.cursor.join('/')}` : 'its start'} ` +
            `(${checkpoint.rowsCopied} rows copied before; upper bound ${checkpoint.scope.upperBound})`,
        );
      } else {
        this.log(`backfill ${scope.entity}: started run "${runKey}" (rows created before ${checkpoint.scope.upperBound})`);
      }
      const copied = await this.copy(runKey, checkpoint, lock, options, progress);
      await this.checkpoints.finish(runKey);
      const finished = (await this.checkpoints.find(runKey))!;
      return this.result(finished, 'complete', { ...copied, startedAt, resumed, resumedFrom: resumed ? checkpoint.cursor : null });
    });
  }

  private async copy(
    runKey: string,
    checkpoint: Checkpoint,
    lock: RunLock,
    options: BackfillOptions,
    progress: BackfillProgress,
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
    const insert = async (batch: Batch) => {
      // Names this batch of this run: a retry, or a resume re-sending a batch that landed just before
      // the process died, is dropped by ClickHouse; --restart has a new bound, so new tokens.
      const token = createHash('sha256')
        .update(JSON.stringify([runKey, upperBound, batch.from, batch.to, batch.body.rows]))
        .digest('hex');
      await this.clickhouse.insert(entity.table, batch.body.finish(), token);
      await this.checkpoints.advance(runKey, batch.to, batch.body.rows, lock);
      rows += batch.body.rows;
      batches += 1;
      progress.advance(batch.body.rows, batch.to);
    };
    // One insert in flight while the next batch is mapped; each starts after the previous
    // one (and its checkpoint) finished, so the checkpoint only ever moves forward.
    let inFlight: Promise<void> = Promise.resolve();
    const send = async (batch: Batch) => {
      await inFlight;
      inFlight = insert(batch);
      inFlight.catch(() => undefined);
    };

    try {
      let next: Promise<KeysetPage<unknown>> = reader.page(scope, cursor, limits, upperBound);
      for (;;) {
        const page = await next;
        if (page.rows.length === 0) break;
        // Read ahead: Postgres prepares the next page while this one is mapped and inserted.
        next = reader.page(scope, page.last, limits, upperBound);
        next.catch(() => undefined);

        let batch: Batch = newBatch(cursor);
        for (let i = 0; i < page.rows.length; i++) {
          const line = entity.line(entity.mirrored(page.rows[i]));
          const bytes = Buffer.byteLength(line) + 1;
          if (batch.body.rows > 0 && (batch.body.rows >= limits.rows || batch.body.bytes + bytes > limits.bytes)) {
            batch.to = entity.cursorOf(page.rows[i - 1]);
            await send(batch);
            batch = newBatch(batch.to);
          }
          batch.body.add(line, bytes);
        }
        batch.to = page.last!;
        await send(batch);
        cursor = batch.to;
      }
      await inFlight;
    } finally {
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
    if (existing.status === 'complete') return { entity: scope.entity, runKey, rows: 0, checkpoint: 'already-complete' };
    const rows = await reader.count(scope, existing.cursor, existing.scope.upperBound);
    return { entity: scope.entity, runKey, rows, checkpoint: 'resume' };
  }
  // A new run's bound would be now(); rows the count cannot see yet are the live mirror's.
  return { entity: scope.entity, runKey, rows: await reader.count(scope, null), checkpoint: existing ? 'restart' : 'new' };
}

function newBatch(from: string[] | null): Batch {
  return { body: new JsonLinesBody(), from, to: from ?? [] };
}
