import { DeletedNode, NodeInput, ObservabilityNode } from './node';

export const OBSERVABILITY_DAO = Symbol('OBSERVABILITY_DAO');

export interface NodeQuery {
  tree_id?: string;
  node_type?: string;
  node_name?: string;
  oldest?: string;
  newest?: string;
  limit?: number;
  /** Opaque cursor from the previous page's `next`. */
  next?: string;
}

/** A page of a node query, newest time_start first. */
export interface NodePage {
  nodes: ObservabilityNode[];
  /** Pass as the query's `next` to get the following page; null on the last page. */
  next: string | null;
}

/** The port ObservabilityService talks to; same rules as TracingDao. */
export interface ObservabilityDao {
  /** Inserts nodes, replacing existing ones with the same node_id (idempotent ingest). */
  ingestNodes(projectId: string, nodes: NodeInput[]): Promise<ObservabilityNode[]>;
  /** Every node of the tree; with `maxNodes`, more than that many is a TreeTooLargeError and nothing is returned. */
  readTree(projectId: string, treeId: string, options?: { maxNodes?: number }): Promise<ObservabilityNode[]>;
  /** One page, newest first; with `maxNodes`, at most that many nodes whatever the query's limit (`next` goes on). */
  queryNodes(projectId: string, query: NodeQuery, options?: { maxNodes?: number }): Promise<NodePage>;
  deleteTrees(projectId: string, treeIds: string[]): Promise<DeletedNode[]>;
}

/** A read asked for a whole tree that has more nodes than the bound allows (MAX_RESPONSE_ITEMS). */
export class TreeTooLargeError extends Error {
  constructor(readonly treeId: string, readonly maxNodes: number) {
    super(`tree ${treeId} has more than ${maxNodes} nodes`);
    this.name = 'TreeTooLargeError';
  }
}
