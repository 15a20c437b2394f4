import { ClickHouseClient } from '@clickhouse/client';
import { SpanKey } from '../../tracing/span';
import { countByProjectDay, ProjectDayCount, ProjectDayFilter, selectLive } from './mirror-queries';
import {
  fromSpanClickHouseRow,
  MirroredSpan,
  SPAN_COLUMNS,
  SpanClickHouseRow,
  spanIdToUInt64,
} from './span-clickhouse-row.mapper';
import { traceIdToUuid } from '../../tracing/trace-id';

/** Keys per query: bound parameters travel in the URL, which servers cap (1 MiB by default). */
const KEYS_PER_QUERY = 1000;


/**
 * Reads of the span mirror: by key for the backfill's key replay (gaps,
 * verify --repair), and the rest for specs checking what landed. Nothing in
 * the API reads ClickHouse. Every read uses FINAL, so only the newest version
 * of each span counts, and skips tombstones. Every value is a bound parameter.
 */
export class SpanMirrorReads {
  constructor(private readonly client: ClickHouseClient) {}

  async readSpans(projectId: string, keys: SpanKey[]): Promise<MirroredSpan[]> {
    const spans: MirroredSpan[] = [];
    for (let i = 0; i < keys.length; i += KEYS_PER_QUERY) {
      const chunk = keys.slice(i, i + KEYS_PER_QUERY);
      const page = await this.select(
        [
          'project_id = {projectId:UUID}',
          // The plain IN reaches the bloom filter; the tuple IN picks the exact keys.
          'trace_id IN {traceIds:Array(UUID)}',
          '(trace_id, span_id) IN (SELECT arrayJoin(arrayZip({traceIds:Array(UUID)}, {spanIds:Array(UInt64)})))',
        ],
        'ORDER BY trace_id, span_id',
        {
          projectId,
          traceIds: chunk.map((k) => traceIdToUuid(k.trace_id)),
          // bigint: the client writes it bare, as Array(UInt64) needs (a string would be quoted).
          spanIds: chunk.map((k) => BigInt(spanIdToUInt64(k.span_id))),
        },
      );
      spans.push(...page);
    }
    return spans;
  }

  async readTrace(projectId: string, traceId: string): Promise<MirroredSpan[]> {
    return this.select(['project_id = {projectId:UUID}', 'trace_id = {traceId:UUID}'], 'ORDER BY start_time, span_id', {
      projectId,
      traceId: traceIdToUuid(traceId),
    });
  }

  async countByProjectDay(filter: ProjectDayFilter = {}): Promise<ProjectDayCount[]> {
    return countByProjectDay(this.client, 'spans', filter);
  }

  /**
   * Every live span of one project created on one UTC day (YYYY-MM-DD), in
   * key order, a page at a time: keyset pagination on the sort key, so each
   * page is a range read however deep the bucket.
   */
  async *readBucket(projectId: string, day: string, pageSize = 1000): AsyncGenerator<MirroredSpan[]> {
    const where = ['project_id = {projectId:UUID}', 'toDate(created_at) = {day:Date}'];
    let after: MirroredSpan | undefined;
    for (;;) {
      const page = await this.select(
        after ? [...where, '(trace_id, span_id) > ({afterTraceId:UUID}, {afterSpanId:UInt64})'] : where,
        'ORDER BY trace_id, span_id LIMIT {pageSize:UInt32}',
        {
          projectId,
          day,
          pageSize,
          ...(after && { afterTraceId: traceIdToUuid(after.trace_id), afterSpanId: BigInt(spanIdToUInt64(after.span_id)) }),
        },
      );
      if (page.length > 0) yield page;
      if (page.length < pageSize) return;
      after = page[page.length - 1];
    }
  }

  private select(where: string[], tail: string, params: Record<string, unknown>): Promise<MirroredSpan[]> {
    return selectLive(this.client, 'spans', SPAN_COLUMNS, { where, tail, params }, (row: SpanClickHouseRow) => fromSpanClickHouseRow(row));
  }
}
