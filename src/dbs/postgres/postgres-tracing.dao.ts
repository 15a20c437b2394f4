import { Inject, Injectable } from '@nestjs/common';
import { Expression, Kysely, sql, SqlBool, Transaction } from 'kysely';
import { DeletedSpan, Span, SpanInput, SpanKey } from '../../tracing/span';
import { AnalyticsBucket, AnalyticsQuery, SpanPage, SpanQuery } from '../../tracing/span-query';
import { SpanBound, SpansConflictError, SpansNotFoundError, TraceTooLargeError, TracingDao } from '../../tracing/tracing.dao';
import { DB, SpanRow } from './database';
import { selectAtMost } from './bounded-read';
import { KYSELY } from './postgres.tokens';
import { querySpans, spanAnalytics } from './postgres-span-query';
import { traceIdToUuid, uuidToTraceId } from '../../tracing/trace-id';
import { bytesToSpanId, DELETED_SPAN_COLUMNS, deletedSpanFromRow, spanFromRow, spanIdToBytes, spanToRow } from './span-row.mapper';
import { inCallersOrder, inLockOrder } from './lock-order';
import { amongSpanKeys } from './span-keys';
import { inTransaction } from './transactions';

/** Postgres's parameter limit is 65535; a span row binds 20 values. */
const INSERT_CHUNK = 1000;

/**
 * A write's row version must grow with every write to the same row even when
 * two writes land in the same microsecond; the mirror relies on it.
 */
const nextVersion = sql<string>`greatest(clock_timestamp(), spans.updated_at + interval '1 microsecond')`;

/**
 * A delete's version (its tombstone's in ClickHouse): just past the deleted
 * row's own, not the clock. An INSERT computes a new row's version before it
 * waits on a conflicting row, so a span re-created while a delete of it was
 * in flight carries a clock reading from before the delete ran; a tombstone
 * at the delete's clock would outrank it, and ClickHouse would hide the live
 * row. The deleted row's version is older than that INSERT (it was written
 * before the INSERT began), so one microsecond past it is too. Left: an
 * update of the span committed between that INSERT's start and the delete
 * still puts the tombstone past the re-created row (three writes to one span
 * within a moment); verify finds it and --repair mends it. Closing that too
 * would cost every write a locking round trip before its INSERT (measured:
 * 1-span writes 0.47 -> 0.90 ms at the median).
 */
const tombstoneVersion = sql<string>`spans.updated_at + interval '1 microsecond'`;

@Injectable()
export class PostgresTracingDao implements TracingDao {
  constructor(@Inject(KYSELY) private readonly db: Kysely<DB>) {}

  async createSpans(projectId: string, spans: SpanInput[], options: { userId: string | null; upsert: boolean }): Promise<Span[]> {
    return inTransaction(this.db, async (trx) => {
      const stored = await this.insertInLockOrder(trx, projectId, spans, options);
      if (!options.upsert && stored.length < spans.length) {
        const created = new Set(stored.map(keyOf));
        throw new SpansConflictError(spans.filter((s) => !created.has(keyOf(s))).map(({ trace_id, span_id }) => ({ trace_id, span_id })));
      }
      return stored;
    });
  }

  async updateSpans(projectId: string, spans: SpanInput[], options: { userId: string | null }): Promise<Span[]> {
    if (spans.length === 0) return [];
    return inTransaction(this.db, async (trx) => {
      const existing = await this.lockKeys(trx, projectId, spans);
      const missing = spans.filter((s) => !existing.has(keyOf(s)));
      if (missing.length) throw new SpansNotFoundError(missing.map(({ trace_id, span_id }) => ({ trace_id, span_id })));
      return this.insertInLockOrder(trx, projectId, spans, { ...options, upsert: true });
    });
  }

  async readSpans(projectId: string, keys: SpanKey[]): Promise<Span[]> {
    if (keys.length === 0) return [];
    const rows = await this.db
      .selectFrom('spans')
      .selectAll()
      .where('project_id', '=', projectId)
      .where(amongSpanKeys(keys))
      .orderBy('start_time')
      .orderBy('span_id')
      .execute();
    return rows.map(spanFromRow);
  }

  async deleteSpans(projectId: string, keys: SpanKey[]): Promise<DeletedSpan[]> {
    if (keys.length === 0) return [];
    return this.deleteInLockOrder(projectId, amongSpanKeys(keys));
  }

  async readTraces(projectId: string, traceIds: string[], options: SpanBound = {}): Promise<Span[]> {
    if (traceIds.length === 0) return [];
    const select = this.db
      .selectFrom('spans')
      .selectAll()
      .where('project_id', '=', projectId)
      .where(amongTraces(traceIds))
      .orderBy('trace_id')
      .orderBy('start_time')
      .orderBy('span_id');
    const rows = await selectAtMost(select, options.maxSpans, (max) => new TraceTooLargeError(traceIds, max));
    return rows.map(spanFromRow);
  }

  async deleteTraces(projectId: string, traceIds: string[]): Promise<DeletedSpan[]> {
    if (traceIds.length === 0) return [];
    return this.deleteInLockOrder(projectId, amongTraces(traceIds));
  }

  /**
   * Deletes the project's spans that `which` selects. A DELETE locks rows in
   * the order its plan finds them (over many traces, as they sit on disk), so
   * it deletes only the rows a subquery has locked in primary-key order, as
   * every write locks them (lock-order.ts). One statement, one snapshot: a
   * span that joins the selection meanwhile is not locked out of order (with
   * a separate lock step, the DELETE's later snapshot took it in as its plan
   * found it, and could deadlock with a writer of it). In a transaction, like
   * every write: a delete the client gives up on is then never committed (see
   * createPool).
   */
  private deleteInLockOrder(projectId: string, which: Expression<SqlBool>): Promise<DeletedSpan[]> {
    return inTransaction(this.db, async (trx) => {
      const locked = trx
        .selectFrom('spans')
        .select(['trace_id', 'span_id'])
        .where('project_id', '=', projectId)
        .where(which)
        .orderBy('trace_id')
        .orderBy('span_id')
        .forUpdate();
      const rows = await trx
        .deleteFrom('spans')
        .where('project_id', '=', projectId)
        .where(sql<SqlBool>`(trace_id, span_id) in (${locked})`)
        .returning([...DELETED_SPAN_COLUMNS, tombstoneVersion.as('deleted_at')])
        .execute();
      return rows.map(deletedSpanFromRow);
    });
  }

  query(projectId: string, query: SpanQuery, options: SpanBound = {}): Promise<SpanPage> {
    return querySpans(this.db, projectId, query, options);
  }

  analytics(projectId: string, query: AnalyticsQuery): Promise<AnalyticsBucket[]> {
    return spanAnalytics(this.db, projectId, query);
  }

  /** Writes the spans in the primary key's order (see lock-order.ts) and returns the stored ones in the caller's. */
  private async insertInLockOrder(
    trx: Transaction<DB>,
    projectId: string,
    spans: SpanInput[],
    options: { userId: string | null; upsert: boolean },
  ): Promise<Span[]> {
    const ordered = inLockOrder(spans, keyOf);
    const stored: SpanRow[] = [];
    for (let i = 0; i < ordered.length; i += INSERT_CHUNK) {
      stored.push(...(await this.insertChunk(trx, projectId, ordered.slice(i, i + INSERT_CHUNK), options)));
    }
    return inCallersOrder(spans, stored.map(spanFromRow), keyOf);
  }

  private async insertChunk(
    trx: Transaction<DB>,
    projectId: string,
    spans: SpanInput[],
    options: { userId: string | null; upsert: boolean },
  ): Promise<SpanRow[]> {
    const insert = trx.insertInto('spans').values(spans.map((s) => spanToRow(projectId, s, options.userId)));
    if (!options.upsert) return insert.onConflict((oc) => oc.doNothing()).returningAll().execute();
    return insert
      .onConflict((oc) =>
        oc.columns(['project_id', 'trace_id', 'span_id']).doUpdateSet((eb) => ({
          parent_id: eb.ref('excluded.parent_id'),
          trace_type: eb.ref('excluded.trace_type'),
          span_type: eb.ref('excluded.span_type'),
          span_kind: eb.ref('excluded.span_kind'),
          span_name: eb.ref('excluded.span_name'),
          start_time: eb.ref('excluded.start_time'),
          end_time: eb.ref('excluded.end_time'),
          status_code: eb.ref('excluded.status_code'),
          status_message: eb.ref('excluded.status_message'),
          attributes: eb.ref('excluded.attributes'),
          references: eb.ref('excluded.references'),
          links: eb.ref('excluded.links'),
          hashes: eb.ref('excluded.hashes'),
          events: eb.ref('excluded.events'),
          exception: eb.ref('excluded.exception'),
          updated_by_id: eb.ref('excluded.updated_by_id'),
          updated_at: nextVersion,
        })),
      )
      .returningAll()
      .execute();
  }

  /** Locks the spans that exist among `spans`, in primary-key order (lock-order.ts), and returns their keys. */
  private async lockKeys(trx: Transaction<DB>, projectId: string, spans: SpanKey[]): Promise<Set<string>> {
    const existing = new Set<string>();
    const ordered = inLockOrder(spans, keyOf);
    for (let i = 0; i < ordered.length; i += INSERT_CHUNK) {
      const chunk = ordered.slice(i, i + INSERT_CHUNK);
      // The keys as two arrays joined through unnest: one index probe per key, planned at the cost of one
      // (an IN list of row tuples costs Postgres a plan as long as the list).
      const { rows } = await sql<{ trace_id: string; span_id: Buffer }>`
        select s.trace_id, s.span_id
        from unnest(${chunk.map((k) => traceIdToUuid(k.trace_id))}::uuid[], ${chunk.map((k) => spanIdToBytes(k.span_id))}::bytea[]) as k(trace_id, span_id)
        join spans s on s.project_id = ${projectId} and s.trace_id = k.trace_id and s.span_id = k.span_id
        order by s.trace_id, s.span_id
        for update of s`.execute(trx);
      for (const r of rows) existing.add(keyOf({ trace_id: uuidToTraceId(r.trace_id), span_id: bytesToSpanId(r.span_id) }));
    }
    return existing;
  }
}

/** The spans of `traceIds`, bound as one array, as amongSpanKeys binds keys (span-keys.ts). */
function amongTraces(traceIds: string[]): Expression<SqlBool> {
  return sql<SqlBool>`trace_id = any(${traceIds.map(traceIdToUuid)}::uuid[])`;
}

/** Lower case, as stored rows come back: a caller's upper-case hex must still find its stored row. */
function keyOf(span: SpanKey): string {
  return `${span.trace_id}/${span.span_id}`.toLowerCase();
}
