import { countByProjectDay, ProjectDayCount, ProjectDayFilter } from '../../src/dbs/clickhouse/mirror-queries';
import { MirroredNode } from '../../src/dbs/clickhouse/node-clickhouse-row.mapper';
import { NodeMirrorReads } from '../../src/dbs/clickhouse/node-mirror-reads';
import { MirroredSpan, spanIdToUInt64 } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { SpanMirrorReads } from '../../src/dbs/clickhouse/span-mirror-reads';
import { traceIdToUuid } from '../../src/tracing/trace-id';

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

  /** Every live node of one project created on one UTC day (YYYY-MM-DD), in key order, a page at a time (keyset). */
  async *readBucket(projectId: string, day: string, pageSize = 1000): AsyncGenerator<MirroredNode[]> {
    const where = ['project_id = {projectId:UUID}', 'toDate(created_at) = {day:Date}'];
    let after: MirroredNode | undefined;
    for (;;) {
      const page = await this.select(
        after ? [...where, 'node_id > {afterNodeId:UUID}'] : where,
        'ORDER BY node_id LIMIT {pageSize:UInt32}',
        { projectId, day, pageSize, ...(after && { afterNodeId: after.node_id }) },
      );
      if (page.length > 0) yield page;
      if (page.length < pageSize) return;
      after = page[page.length - 1];
    }
  }
}
