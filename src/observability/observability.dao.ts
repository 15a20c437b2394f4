import { DeletedNode, NodeInput, ObservabilityNode } from './node';

export const OBSERVABILITY_DAO = Symbol('OBSERVABILITY_DAO');

export interface NodeQuery {
  tree_id?: string;
  node_type?: string;
  node_name?: string;
  oldest?: string;
  newest?: string;
  limit?: number;
}

/** The port ObservabilityService talks to; same rules as TracingDao. */
export interface ObservabilityDao {
  /** Inserts nodes, replacing existing ones with the same node_id (idempotent ingest). */
  ingestNodes(projectId: string, nodes: NodeInput[]): Promise<ObservabilityNode[]>;
  readTree(projectId: string, treeId: string): Promise<ObservabilityNode[]>;
  queryNodes(projectId: string, query: NodeQuery): Promise<ObservabilityNode[]>;
  deleteTrees(projectId: string, treeIds: string[]): Promise<DeletedNode[]>;
}
