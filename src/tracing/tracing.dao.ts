import { DeletedSpan, Span, SpanInput, SpanKey } from './span';
import { AnalyticsBucket, AnalyticsQuery, SpanPage, SpanQuery } from './span-query';

export const TRACING_DAO = Symbol('TRACING_DAO');

/**
 * The port TracingService talks to. The Postgres adapter implements it; with
 * USE_CLICKHOUSE on, a mirroring decorator around that adapter is bound
 * instead. Every method is scoped to one project. Writes are atomic: they
 * commit every row or none, and return the committed rows as stored.
 */
export interface TracingDao {
  /** Inserts new spans; `upsert` replaces existing ones instead of failing. */
  createSpans(projectId: string, spans: SpanInput[], options: { userId: string | null; upsert: boolean }): Promise<Span[]>;
  /** Replaces existing spans; fails with SpansNotFoundError if any is missing. */
  updateSpans(projectId: string, spans: SpanInput[], options: { userId: string | null }): Promise<Span[]>;
  readSpans(projectId: string, keys: SpanKey[]): Promise<Span[]>;
  deleteSpans(projectId: string, keys: SpanKey[]): Promise<DeletedSpan[]>;
  readTraces(projectId: string, traceIds: string[]): Promise<Span[]>;
  deleteTraces(projectId: string, traceIds: string[]): Promise<DeletedSpan[]>;
  query(projectId: string, query: SpanQuery): Promise<SpanPage>;
  analytics(projectId: string, query: AnalyticsQuery): Promise<AnalyticsBucket[]>;
}

export class SpansConflictError extends Error {
  constructor(readonly keys: SpanKey[]) {
    super(`spans already exist: ${keys.map((k) => `${k.trace_id}/${k.span_id}`).join(', ')}`);
    this.name = 'SpansConflictError';
  }
}

export class SpansNotFoundError extends Error {
  constructor(readonly keys: SpanKey[]) {
    super(`spans not found: ${keys.map((k) => `${k.trace_id}/${k.span_id}`).join(', ')}`);
    this.name = 'SpansNotFoundError';
  }
}
