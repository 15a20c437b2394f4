import { Inject, Injectable } from '@nestjs/common';
import { NodeInput, ObservabilityNode } from './node';
import { NodePage, NodeQuery, OBSERVABILITY_DAO, ObservabilityDao } from './observability.dao';

/** What callers use for nodes; like TracingService, it never sees the mirror. */
@Injectable()
export class ObservabilityService {
  constructor(@Inject(OBSERVABILITY_DAO) private readonly dao: ObservabilityDao) {}

  ingestNodes(projectId: string, nodes: NodeInput[]): Promise<ObservabilityNode[]> {
    if (nodes.length === 0) return Promise.resolve([]);
    return this.dao.ingestNodes(projectId, nodes);
  }

  /** With `maxNodes`, a tree with more nodes than that is a TreeTooLargeError (see ObservabilityDao). */
  readTree(projectId: string, treeId: string, options: { maxNodes?: number } = {}): Promise<ObservabilityNode[]> {
    return this.dao.readTree(projectId, treeId, options);
  }

  queryNodePage(projectId: string, query: NodeQuery, options: { maxNodes?: number } = {}): Promise<NodePage> {
    return this.dao.queryNodes(projectId, query, options);
  }

  /** Returns how many nodes were deleted. */
  async deleteTrees(projectId: string, treeIds: string[]): Promise<number> {
    return (await this.dao.deleteTrees(projectId, treeIds)).length;
  }
}
