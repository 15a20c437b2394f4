import { Json, JsonObject } from '../tracing/span';

/**
 * The legacy observability node (one per span, organised as trees). Times are
 * ISO-8601 strings with microseconds, for the same reason as spans.
 */
export interface NodeStatus {
  code: string;
  message: string | null;
}

export interface NodeInput {
  node_id: string;
  tree_id: string;
  root_id: string | null;
  parent_id: string | null;
  node_name: string;
  node_type: string;
  time_start: string;
  time_end: string;
  status: NodeStatus;
  data: JsonObject | null;
  metrics: JsonObject | null;
  meta: JsonObject | null;
  refs: JsonObject | null;
  exception: JsonObject | null;
  links: Json[] | null;
  otel: JsonObject | null;
}

export interface ObservabilityNode extends NodeInput {
  project_id: string;
  created_at: string;
  updated_at: string;
}

/** What a delete reports of each node it removed: what its tombstone must carry (see NodeTombstone), never its payload. */
export interface DeletedNode {
  project_id: string;
  node_id: string;
  created_at: string;
  tree_id: string;
  time_start: string;
  deleted_at: string;
}
