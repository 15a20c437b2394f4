import { Json, JsonObject } from '../../tracing/span';
import { ObservabilityNode } from '../../observability/node';
import { GapRow } from './gap-ledger';
import { clickHouseTimeToIso, insertJson, isoToClickHouseTime, jsonText, parseJson } from './span-clickhouse-row.mapper';

/**
 * The one mapping between the observability node and its ClickHouse row
 * (JSONEachRow). Node ids are UUIDs in both stores; times are DateTime64(6)
 * text; JSON payloads are their JSON text (in the insert line, themselves:
 * see insertJson); status is split into two columns.
 */

/** A live node as the mirror stores it: the row plus its version. */
export interface MirroredNode extends ObservabilityNode {
  /** Microseconds of updated_at: the Postgres clock at this write. */
  version: bigint;
  deleted: false;
}

/** A deleted node as the mirror stores it: the sort key's columns and the skip-indexed tree_id and time_start (as the node last had them), at the delete's version (see SpanTombstone). */
export interface NodeTombstone {
  project_id: string;
  node_id: string;
  created_at: string;
  tree_id: string;
  time_start: string;
  /** Microseconds of deleted_at: just past the deleted row's version. */
  version: bigint;
  deleted: true;
}

/** What the mirror writes for a node: its row, or its tombstone. */
export type NodeRecord = MirroredNode | NodeTombstone;

/** The tombstone of this node at `version`: the columns NodeTombstone holds, whatever else `node` carries. */
export function nodeTombstone(node: Omit<NodeTombstone, 'version' | 'deleted'>, version: bigint): NodeTombstone {
  const { project_id, node_id, created_at, tree_id, time_start } = node;
  return { project_id, node_id, created_at, tree_id, time_start, version, deleted: true };
}

export interface NodeClickHouseRow {
  project_id: string;
  node_id: string;
  tree_id: string;
  root_id: string | null;
  parent_id: string | null;
  node_name: string;
  node_type: string;
  time_start: string;
  time_end: string;
  status_code: string;
  status_message: string | null;
  data: string | null;
  metrics: string | null;
  meta: string | null;
  refs: string | null;
  exception: string | null;
  links: string | null;
  otel: string | null;
  created_at: string;
  updated_at: string;
  version: string;
  is_deleted: number;
}

export const NODE_TABLE = 'nodes';

/** The columns, in table order, for SELECT lists. */
export const NODE_COLUMNS = [
  'project_id', 'node_id', 'tree_id', 'root_id', 'parent_id', 'node_name', 'node_type', 'time_start', 'time_end',
  'status_code', 'status_message', 'data', 'metrics', 'meta', 'refs', 'exception', 'links', 'otel',
  'created_at', 'updated_at', 'version', 'is_deleted',
] as const;

/** The node's columns, its JSON payloads encoded by `json`: as text (the stored row) or as themselves (the insert line). */
function nodeColumns<J>(node: MirroredNode, json: (value: Json | null) => J) {
  return {
    project_id: node.project_id,
    node_id: node.node_id,
    tree_id: node.tree_id,
    root_id: node.root_id,
    parent_id: node.parent_id,
    node_name: node.node_name,
    node_type: node.node_type,
    time_start: isoToClickHouseTime(node.time_start),
    time_end: isoToClickHouseTime(node.time_end),
    status_code: node.status.code,
    status_message: node.status.message,
    data: json(node.data),
    metrics: json(node.metrics),
    meta: json(node.meta),
    refs: json(node.refs),
    exception: json(node.exception),
    links: json(node.links),
    otel: json(node.otel),
    created_at: isoToClickHouseTime(node.created_at),
    updated_at: isoToClickHouseTime(node.updated_at),
    version: node.version.toString(10),
    is_deleted: 0,
  };
}

/** A tombstone's columns: the sort key, the skip-indexed columns and the version (the rest take the table's defaults). */
function tombstoneColumns(tombstone: NodeTombstone) {
  return {
    project_id: tombstone.project_id,
    node_id: tombstone.node_id,
    tree_id: tombstone.tree_id,
    time_start: isoToClickHouseTime(tombstone.time_start),
    created_at: isoToClickHouseTime(tombstone.created_at),
    version: tombstone.version.toString(10),
    is_deleted: 1,
  };
}

/** The node's row as ClickHouse stores it and gives it back. */
export function toNodeClickHouseRow(node: MirroredNode): NodeClickHouseRow {
  return nodeColumns(node, jsonText);
}

/** The stored row as one JSONEachRow line, no trailing newline: what ClickHouse gives back for this node. */
export function toNodeClickHouseLine(node: MirroredNode): string {
  return JSON.stringify(toNodeClickHouseRow(node));
}

/**
 * The JSONEachRow line the mirror inserts (no trailing newline): for a live
 * node, ClickHouseSink stores it as toNodeClickHouseLine's row; for a
 * tombstone, the columns NodeTombstone holds.
 */
export function toNodeInsertLine(node: NodeRecord): string {
  return JSON.stringify(node.deleted ? tombstoneColumns(node) : nodeColumns(node, insertJson));
}

/** What a gap record needs of this node: everything the batch writer queues but the line. */
export function toNodeGapRow(node: NodeRecord): GapRow {
  return {
    table: NODE_TABLE,
    entity: 'nodes',
    projectId: node.project_id,
    key: [node.node_id],
    createdAt: node.created_at,
    tombstoneFields: [node.tree_id, node.time_start],
  };
}

/** A live row as read back (every read is FINAL with is_deleted = 0: a tombstone here is a bug in the query). */
export function fromNodeClickHouseRow(row: NodeClickHouseRow): MirroredNode {
  if (Number(row.is_deleted) !== 0) throw new Error(`expected a live node row, got a tombstone of ${row.node_id}`);
  return {
    project_id: row.project_id,
    node_id: row.node_id,
    tree_id: row.tree_id,
    root_id: row.root_id,
    parent_id: row.parent_id,
    node_name: row.node_name,
    node_type: row.node_type,
    time_start: clickHouseTimeToIso(row.time_start),
    time_end: clickHouseTimeToIso(row.time_end),
    status: { code: row.status_code, message: row.status_message },
    data: parseJson<JsonObject>(row.data),
    metrics: parseJson<JsonObject>(row.metrics),
    meta: parseJson<JsonObject>(row.meta),
    refs: parseJson<JsonObject>(row.refs),
    exception: parseJson<JsonObject>(row.exception),
    links: parseJson<Json[]>(row.links),
    otel: parseJson<JsonObject>(row.otel),
    created_at: clickHouseTimeToIso(row.created_at),
    updated_at: clickHouseTimeToIso(row.updated_at),
    version: BigInt(row.version),
    deleted: false,
  };
}
