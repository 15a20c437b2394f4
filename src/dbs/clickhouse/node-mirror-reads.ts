import { ClickHouseClient } from '@clickhouse/client';
import { countByProjectDay, ProjectDayCount, ProjectDayFilter, selectLive } from './mirror-queries';
import { fromNodeClickHouseRow, MirroredNode, NODE_COLUMNS, NodeClickHouseRow } from './node-clickhouse-row.mapper';

/** Ids per query: bound parameters travel in the URL, which servers cap (1 MiB by default). */
const IDS_PER_QUERY = 1000;


/**
 * Reads of the node mirror, for the same callers and by the same rules as
 * SpanMirrorReads (FINAL, no tombstones, bound values only).
 */
export class NodeMirrorReads {
  constructor(private readonly client: ClickHouseClient) {}

  async readNodes(projectId: string, nodeIds: string[]): Promise<MirroredNode[]> {
    const nodes: MirroredNode[] = [];
    for (let i = 0; i < nodeIds.length; i += IDS_PER_QUERY) {
      const page = await this.select(['project_id = {projectId:UUID}', 'node_id IN {nodeIds:Array(UUID)}'], 'ORDER BY node_id', {
        projectId,
        nodeIds: nodeIds.slice(i, i + IDS_PER_QUERY),
      });
      nodes.push(...page);
    }
    return nodes;
  }

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

  private select(where: string[], tail: string, params: Record<string, unknown>): Promise<MirroredNode[]> {
    return selectLive(this.client, 'nodes', NODE_COLUMNS, { where, tail, params }, (row: NodeClickHouseRow) => fromNodeClickHouseRow(row));
  }
}
