import { listed } from '../echo';
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
  /** Every span of the traces; with `maxSpans`, more than that many is a TraceTooLargeError and nothing is returned. */
  readTraces(projectId: string, traceIds: string[], options?: SpanBound): Promise<Span[]>;
  deleteTraces(projectId: string, traceIds: string[]): Promise<DeletedSpan[]>;
  /** With `maxSpans`, a focus-trace page ends before the trace that would take it past that many spans (see TraceTooLargeError). */
  query(projectId: string, query: SpanQuery, options?: SpanBound): Promise<SpanPage>;
  analytics(projectId: string, query: AnalyticsQuery): Promise<AnalyticsBucket[]>;
}

/** How many spans one read may return: what one HTTP answer carries (MAX_RESPONSE_ITEMS). None when absent. */
export interface SpanBound {
  maxSpans?: number;
}

/**
 * A read asked for whole traces, and one (or, read together, several) has
 * more spans than the bound allows. From a focus-trace query, `next` is the
 * cursor of the page after that trace, so paging can go on past it.
 */
export class TraceTooLargeError extends Error {
  constructor(readonly traceIds: string[], readonly maxSpans: number, readonly next?: string) {
    super(traceIds.length === 1
      ? `trace ${traceIds[0]} has more than ${maxSpans} spans`
      : `the ${traceIds.length} traces have more than ${maxSpans} spans together`);
    this.name = 'TraceTooLargeError';
  }
}

export class SpansConflictError extends Error {
  constructor(readonly keys: SpanKey[]) {
    super(`spans already exist: ${listed(keys.map((k) => `${k.trace_id}/${k.span_id}`), 10)}`);
    this.name = 'SpansConflictError';
  }
}

export class SpansNotFoundError extends Error {
  constructor(readonly keys: SpanKey[]) {
    super(`spans not found: ${listed(keys.map((k) => `${k.trace_id}/${k.span_id}`), 10)}`);
    this.name = 'SpansNotFoundError';
  }
}
