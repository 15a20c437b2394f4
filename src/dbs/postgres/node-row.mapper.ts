import { Json, JsonObject } from '../../tracing/span';
import { NodeInput, ObservabilityNode } from '../../observability/node';
import { NewNodeRow, NodeRow } from './database';

/** The one mapping between the observability node and its Postgres row. */

const jsonText = (value: Json | null): string | null => (value === null ? null : JSON.stringify(value));

export function nodeToRow(projectId: string, node: NodeInput): Omit<NewNodeRow, 'created_at' | 'updated_at'> {
  return {
    project_id: projectId,
    node_id: node.node_id,
    tree_id: node.tree_id,
    root_id: node.root_id,
    parent_id: node.parent_id,
    node_name: node.node_name,
    node_type: node.node_type,
    time_start: node.time_start,
    time_end: node.time_end,
    status_code: node.status.code,
    status_message: node.status.message,
    data: jsonText(node.data),
    metrics: jsonText(node.metrics),
    meta: jsonText(node.meta),
    refs: jsonText(node.refs),
    exception: jsonText(node.exception),
    links: jsonText(node.links),
    otel: jsonText(node.otel),
  };
}

export function nodeFromRow(row: NodeRow): ObservabilityNode {
  return {
    project_id: row.project_id,
    node_id: row.node_id,
    tree_id: row.tree_id,
    root_id: row.root_id,
    parent_id: row.parent_id,
    node_name: row.node_name,
    node_type: row.node_type,
    time_start: row.time_start,
    time_end: row.time_end,
    status: { code: row.status_code, message: row.status_message },
    data: row.data as JsonObject | null,
    metrics: row.metrics as JsonObject | null,
    meta: row.meta as JsonObject | null,
    refs: row.refs as JsonObject | null,
    exception: row.exception as JsonObject | null,
    links: row.links as Json[] | null,
    otel: row.otel as JsonObject | null,
    created_at: row.created_at,
    updated_at: row.updated_at,
  };
}
