import { Inject, Injectable } from '@nestjs/common';
import { Kysely, sql, Transaction } from 'kysely';
import { DeletedSpan, Span, SpanInput, SpanKey } from '../../tracing/span';
import { AnalyticsBucket, AnalyticsQuery, SpanPage, SpanQuery } from '../../tracing/span-query';
import { SpansConflictError, SpansNotFoundError, TracingDao } from '../../tracing/tracing.dao';
import { DB, SpanRow } from './database';
import { KYSELY } from './postgres.tokens';
import { querySpans, spanAnalytics } from './postgres-span-query';
import { traceIdToUuid } from '../../tracing/trace-id';
import { spanFromRow, spanIdToBytes, spanToRow } from './span-row.mapper';
import { inCallersOrder, inLockOrder } from './lock-order';

/** Postgres's parameter limit is 65535; a span row binds 20 values. */
const INSERT_CHUNK = 1000;

/**
 * A write's row version must grow with every write to the same row even when
 * two writes land in the same microsecond; the mirror relies on it.
 */
const nextVersion = sql<string>`greatest(clock_timestamp(), spans.updated_at + interval '1 microsecond')`;

@Injectable()
export class PostgresTracingDao implements TracingDao {
  constructor(@Inject(KYSELY) private readonly db: Kysely<DB>) {}

  async createSpans(projectId: string, spans: SpanInput[], options: { userId: string | null; upsert: boolean }): Promise<Span[]> {
    return this.db.transaction().execute(async (trx) => {
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
    return this.db.transaction().execute(async (trx) => {
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
      .where((eb) => eb(eb.refTuple('trace_id', 'span_id'), 'in', keys.map((k) => eb.tuple(traceIdToUuid(k.trace_id), spanIdToBytes(k.span_id)))))
      .orderBy('start_time')
      .orderBy('span_id')
      .execute();
    return rows.map(spanFromRow);
  }

  async deleteSpans(projectId: string, keys: SpanKey[]): Promise<DeletedSpan[]> {
    if (keys.length === 0) return [];
    // In a transaction, like every write: a delete the client gives up on is then never committed (see createPool).
    const rows = await this.db.transaction().execute((trx) =>
      trx
        .deleteFrom('spans')
        .where('project_id', '=', projectId)
        .where((eb) => eb(eb.refTuple('trace_id', 'span_id'), 'in', keys.map((k) => eb.tuple(traceIdToUuid(k.trace_id), spanIdToBytes(k.span_id)))))
        .returningAll()
        .returning(nextVersion.as('deleted_at'))
        .execute(),
    );
    return rows.map((row) => ({ ...spanFromRow(row), deleted_at: row.deleted_at }));
  }

  async readTraces(projectId: string, traceIds: string[]): Promise<Span[]> {
    if (traceIds.length === 0) return [];
    const rows = await this.db
      .selectFrom('spans')
      .selectAll()
      .where('project_id', '=', projectId)
      .where('trace_id', 'in', traceIds.map(traceIdToUuid))
      .orderBy('trace_id')
      .orderBy('start_time')
      .orderBy('span_id')
      .execute();
    return rows.map(spanFromRow);
  }

  async deleteTraces(projectId: string, traceIds: string[]): Promise<DeletedSpan[]> {
    if (traceIds.length === 0) return [];
    const rows = await this.db.transaction().execute((trx) =>
      trx
        .deleteFrom('spans')
        .where('project_id', '=', projectId)
        .where('trace_id', 'in', traceIds.map(traceIdToUuid))
        .returningAll()
        .returning(nextVersion.as('deleted_at'))
        .execute(),
    );
    return rows.map((row) => ({ ...spanFromRow(row), deleted_at: row.deleted_at }));
  }

  query(projectId: string, query: SpanQuery): Promise<SpanPage> {
    return querySpans(this.db, projectId, query);
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

  private async lockKeys(trx: Transaction<DB>, projectId: string, spans: SpanKey[]): Promise<Set<string>> {
    const rows = await trx
      .selectFrom('spans')
      .select(['trace_id', 'span_id'])
      .where('project_id', '=', projectId)
      .where((eb) => eb(eb.refTuple('trace_id', 'span_id'), 'in', spans.map((k) => eb.tuple(traceIdToUuid(k.trace_id), spanIdToBytes(k.span_id)))))
      .orderBy('trace_id')
      .orderBy('span_id') // locks are taken in this order: the writes' (lock-order.ts)
      .forUpdate()
      .execute();
    return new Set(rows.map((r) => `${r.trace_id.replace(/-/g, '')}/${r.span_id.toString('hex')}`));
  }
}

function keyOf(span: SpanKey): string {
  return `${span.trace_id}/${span.span_id}`;
}
