import { ClickHouseClient } from '@clickhouse/client';
import { selectLive } from './mirror-queries';
import { fromNodeClickHouseRow, MirroredNode, NODE_COLUMNS, NodeClickHouseRow } from './node-clickhouse-row.mapper';

/** Ids per query: bound parameters travel in the URL, which servers cap (1 MiB by default). */
const IDS_PER_QUERY = 1000;


/**
 * Reads of the node mirror by id, for the same callers and by the same rules
 * as SpanMirrorReads (FINAL, no tombstones, bound values only).
 */
export class NodeMirrorReads {
  constructor(protected readonly client: ClickHouseClient) {}

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

  protected select(where: string[], tail: string, params: Record<string, unknown>): Promise<MirroredNode[]> {
    return selectLive(this.client, 'nodes', NODE_COLUMNS, { where, tail, params }, (row: NodeClickHouseRow) => fromNodeClickHouseRow(row));
  }
}
