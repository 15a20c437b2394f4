import { ClickHouseClient } from '@clickhouse/client';
import { SpanKey } from '../../tracing/span';
import { selectLive } from './mirror-queries';
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
 * Reads of the span mirror by key, for the backfill's key replay (gaps,
 * verify --repair); specs checking what landed read more through a subclass
 * of their own (test/support/mirror-reads.ts). Nothing in the API reads
 * ClickHouse. Every read uses FINAL, so only the newest version of each span
 * counts, and skips tombstones. Every value is a bound parameter.
 */
export class SpanMirrorReads {
  constructor(protected readonly client: ClickHouseClient) {}

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

  protected select(where: string[], tail: string, params: Record<string, unknown>): Promise<MirroredSpan[]> {
    return selectLive(this.client, 'spans', SPAN_COLUMNS, { where, tail, params }, (row: SpanClickHouseRow) => fromSpanClickHouseRow(row));
  }
}
