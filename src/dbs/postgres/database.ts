import { ColumnType, Generated, Insertable, Selectable } from 'kysely';

/**
 * Table types for Kysely. Timestamps are read as ISO-8601 strings with
 * microseconds (see postgres-pool.ts, which installs that parser), so the
 * select type is string; writes accept the same strings.
 */
type Timestamp = ColumnType<string, string | undefined, string>;
type Jsonb<T> = ColumnType<T, string, string>;

export interface SpansTable {
  project_id: string;
  /** uuid: 16 bytes for OTel's 32-hex trace id. */
  trace_id: string;
  /** bytea: 8 bytes for OTel's 16-hex span id. */
  span_id: Buffer;
  parent_id: Buffer | null;
  trace_type: string;
  span_type: string;
  span_kind: string;
  span_name: string;
  start_time: string;
  end_time: string;
  status_code: string;
  status_message: string | null;
  attributes: Jsonb<unknown>;
  references: Jsonb<unknown> | null;
  links: Jsonb<unknown> | null;
  hashes: Jsonb<unknown> | null;
  events: Jsonb<unknown> | null;
  exception: Jsonb<unknown> | null;
  created_at: Timestamp;
  updated_at: Timestamp;
  created_by_id: string | null;
  updated_by_id: string | null;
}

export interface NodesTable {
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
  data: Jsonb<unknown> | null;
  metrics: Jsonb<unknown> | null;
  meta: Jsonb<unknown> | null;
  refs: Jsonb<unknown> | null;
  exception: Jsonb<unknown> | null;
  links: Jsonb<unknown> | null;
  otel: Jsonb<unknown> | null;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface ApiKeysTable {
  id: Generated<string>;
  project_id: string;
  /** First characters of the key, shown to operators; never enough to use it. */
  prefix: string;
  /** sha256 of the key: keys are high-entropy, so a slow hash buys nothing. */
  key_hash: string;
  created_at: Timestamp;
  revoked_at: Timestamp | null;
}

/** Rows the mirror could not keep or send: replayed by `backfill --gaps`. */
export interface MirrorGapsTable {
  id: Generated<string>;
  entity: string;
  project_id: string;
  /** JSON array of primary keys (hex/uuid strings) of the rows affected. */
  keys: Jsonb<unknown>;
  row_count: number;
  min_created_at: string;
  max_created_at: string;
  reason: string;
  recorded_at: Timestamp;
  replayed_at: Timestamp | null;
}

/** One row per backfill run, updated after every batch ClickHouse accepted. */
export interface BackfillCheckpointsTable {
  run_key: string;
  entity: string;
  /** JSON: the filters and the upper bound fixed when the run started. */
  scope: Jsonb<unknown>;
  /** JSON tuple cursor: the last key copied, or null before the first batch. */
  cursor: Jsonb<unknown> | null;
  rows_copied: ColumnType<string, string | number | bigint, string | number | bigint>;
  status: string;
  started_at: Timestamp;
  updated_at: Timestamp;
  finished_at: Timestamp | null;
}

export interface DB {
  spans: SpansTable;
  nodes: NodesTable;
  api_keys: ApiKeysTable;
  mirror_gaps: MirrorGapsTable;
  backfill_checkpoints: BackfillCheckpointsTable;
}

export type SpanRow = Selectable<SpansTable>;
export type NewSpanRow = Insertable<SpansTable>;
export type NodeRow = Selectable<NodesTable>;
export type NewNodeRow = Insertable<NodesTable>;
export type MirrorGapRow = Selectable<MirrorGapsTable>;
