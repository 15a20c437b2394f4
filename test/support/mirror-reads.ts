import { countByProjectDay, ProjectDayCount, ProjectDayFilter } from '../../src/dbs/clickhouse/mirror-queries';
import { MirroredNode } from '../../src/dbs/clickhouse/node-clickhouse-row.mapper';
import { NodeMirrorReads } from '../../src/dbs/clickhouse/node-mirror-reads';
import { MirroredSpan, spanIdToUInt64 } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { SpanMirrorReads } from '../../src/dbs/clickhouse/span-mirror-reads';
import { traceIdToUuid } from '../../src/tracing/trace-id';

/**
 * A day's rows a page at a time, keyset-paginated on the table's sort key (each page a range read however deep
 * the day): `page` reads the rows after the last one of the page before (none for the first).
 */
async function* keysetPages<Row>(pageSize: number, page: (after: Row | undefined) => Promise<Row[]>): AsyncGenerator<Row[]> {
  let after: Row | undefined;
  for (;;) {
    const rows = await page(after);
    if (rows.length > 0) yield rows;
    if (rows.length < pageSize) return;
    after = rows[rows.length - 1];
  }
}

const DAY = ['project_id = {projectId:UUID}', 'toDate(created_at) = {day:Date}'];

/**
 * What specs read of the mirror to check what landed, beside the product's
 * reads by key: a whole trace or tree, live rows per project and day, and a
 * day's rows in pages. By the product's rules (FINAL, no tombstones, bound
 * values only), through its select.
 */
export class SpanMirrorQueries extends SpanMirrorReads {
  async readTrace(projectId: string, traceId: string): Promise<MirroredSpan[]> {
    return this.select(['project_id = {projectId:UUID}', 'trace_id = {traceId:UUID}'], 'ORDER BY start_time, span_id', {
      projectId,
      traceId: traceIdToUuid(traceId),
    });
  }

  async countByProjectDay(filter: ProjectDayFilter = {}): Promise<ProjectDayCount[]> {
    return countByProjectDay(this.client, 'spans', filter);
  }

  /** Every live span of one project created on one UTC day (YYYY-MM-DD), in key order, a page at a time. */
  readBucket(projectId: string, day: string, pageSize = 1000): AsyncGenerator<MirroredSpan[]> {
    return keysetPages(pageSize, (after: MirroredSpan | undefined) =>
      this.select(
        after ? [...DAY, '(trace_id, span_id) > ({afterTraceId:UUID}, {afterSpanId:UInt64})'] : DAY,
        'ORDER BY trace_id, span_id LIMIT {pageSize:UInt32}',
        {
          projectId,
          day,
          pageSize,
          ...(after && { afterTraceId: traceIdToUuid(after.trace_id), afterSpanId: BigInt(spanIdToUInt64(after.span_id)) }),
        },
      ),
    );
  }
}

export class NodeMirrorQueries extends NodeMirrorReads {
  async readTree(projectId: string, treeId: string): Promise<MirroredNode[]> {
    return this.select(['project_id = {projectId:UUID}', 'tree_id = {treeId:UUID}'], 'ORDER BY time_start, node_id', {
      projectId,
      treeId,
    });
  }

  async countByProjectDay(filter: ProjectDayFilter = {}): Promise<ProjectDayCount[]> {
    return countByProjectDay(this.client, 'nodes', filter);
  }

  /** Every live node of one project created on one UTC day (YYYY-MM-DD), in key order, a page at a time. */
  readBucket(projectId: string, day: string, pageSize = 1000): AsyncGenerator<MirroredNode[]> {
    return keysetPages(pageSize, (after: MirroredNode | undefined) =>
      this.select(after ? [...DAY, 'node_id > {afterNodeId:UUID}'] : DAY, 'ORDER BY node_id LIMIT {pageSize:UInt32}', {
        projectId,
        day,
        pageSize,
        ...(after && { afterNodeId: after.node_id }),
      }),
    );
  }
}
