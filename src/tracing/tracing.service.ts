import { Inject, Injectable } from '@nestjs/common';
import { Span, SpanInput, SpanKey } from './span';
import { AnalyticsBucket, AnalyticsQuery, SpanPage, SpanQuery } from './span-query';
import { SpanBound, TRACING_DAO, TracingDao } from './tracing.dao';

/**
 * What callers use to read and write spans. It knows only the TracingDao
 * port: whether writes are mirrored to ClickHouse is decided where the port
 * is bound (src/dbs/storage.module.ts), never here.
 */
@Injectable()
export class TracingService {
  constructor(@Inject(TRACING_DAO) private readonly dao: TracingDao) {}

  createSpans(projectId: string, spans: SpanInput[], options: { userId?: string | null; upsert?: boolean } = {}): Promise<Span[]> {
    if (spans.length === 0) return Promise.resolve([]);
    return this.dao.createSpans(projectId, spans, { userId: options.userId ?? null, upsert: options.upsert ?? false });
  }

  readSpans(projectId: string, keys: SpanKey[]): Promise<Span[]> {
    return this.dao.readSpans(projectId, keys);
  }

  updateSpans(projectId: string, spans: SpanInput[], options: { userId?: string | null } = {}): Promise<Span[]> {
    return this.dao.updateSpans(projectId, spans, { userId: options.userId ?? null });
  }

  /** Returns how many spans were deleted. */
  async deleteSpans(projectId: string, keys: SpanKey[]): Promise<number> {
    return (await this.dao.deleteSpans(projectId, keys)).length;
  }

  /** With `maxSpans`, traces with more spans than that are a TraceTooLargeError (see TracingDao). */
  readTraces(projectId: string, traceIds: string[], options: SpanBound = {}): Promise<Span[]> {
    return this.dao.readTraces(projectId, traceIds, options);
  }

  /** Returns how many spans were deleted. */
  async deleteTraces(projectId: string, traceIds: string[]): Promise<number> {
    return (await this.dao.deleteTraces(projectId, traceIds)).length;
  }

  query(projectId: string, query: SpanQuery, options: SpanBound = {}): Promise<SpanPage> {
    return this.dao.query(projectId, query, options);
  }

  analytics(projectId: string, query: AnalyticsQuery): Promise<AnalyticsBucket[]> {
    return this.dao.analytics(projectId, query);
  }
}
