import { ClickHouseClient } from '@clickhouse/client';
import { Expression, RawBuilder, sql, SqlBool } from 'kysely';
import { isoToMicros } from '../../tracing/timestamp';
import { errorText } from '../../error-text';
import { isUuid } from '../../uuid';
import { NodeMirrorReads } from '../clickhouse/node-mirror-reads';
import { SpanMirrorReads } from '../clickhouse/span-mirror-reads';
import { MirroredNode, NODE_COLUMNS, nodeTombstone, toNodeClickHouseLine, toNodeInsertLine } from '../clickhouse/node-clickhouse-row.mapper';
import {
  MirroredSpan,
  SPAN_COLUMNS,
  spanIdToUInt64,
  spanTombstone,
  toSpanClickHouseLine,
  toSpanInsertLine,
  uint64ToSpanId,
} from '../clickhouse/span-clickhouse-row.mapper';
import { traceIdToUuid, uuidToTraceId } from '../../tracing/trace-id';
import { NodeRow, SpanRow } from '../postgres/database';
import { nodeFromRow } from '../postgres/node-row.mapper';
import { spanFromRow } from '../postgres/span-row.mapper';
import { amongSpanKeys } from '../postgres/span-keys';
import { Entity } from './history-scope';

/** What both mirrored records (MirroredSpan, MirroredNode) share. */
export interface MirroredRecord {
  project_id: string;
  created_at: string;
  version: bigint;
  deleted: boolean;
}

/** A gap record's entry read back (gap-ledger's gapEntryOf). */
export interface GapEntry {
  key: string[];
  /** The tombstone the entry describes, at a version of the replay's choosing; null for an entry recorded with its key alone. */
  tombstone: { createdAt: string; lineAt(version: bigint): string } | null;
}

/**
 * What backfill and verify need to know about one mirrored table, on both
 * sides. Rows become ClickHouse lines through the tables' row mappers, or
 * (`copy`, the backfill's bulk path) through SQL that bulk-copy.spec holds to
 * them, at the version a live write gives them (µs of updated_at), so a
 * copied row and a mirrored one are the same line.
 *
 * Keys travel as the mirror's gap records write them: spans as
 * [trace id hex, span id hex], nodes as [node id]. Row is the table's
 * Postgres row type (SpanRow, NodeRow).
 */
export interface HistoryEntity<Row = any, Mirrored extends MirroredRecord = MirroredRecord> {
  name: Entity;
  /** The table, named alike in Postgres and ClickHouse. */
  table: Entity;
  /** Postgres: the keyset tuple, matching the table's (created_at, project_id, ...) index. */
  keyset: ReadonlyArray<{ column: string; bind(value: unknown): RawBuilder<unknown> }>;
  /** Postgres: every column a ClickHouse line needs. */
  columns: readonly string[];
  /**
   * Postgres: a row's stored size without detoasting it (pg_column_size of
   * the big columns; compressed values count compressed), to bound a page's
   * memory before the rows are fetched.
   */
  storedSize: RawBuilder<number>;
  /** Postgres: keys as a condition, for reads by key, bound as arrays (as the DAOs bind them). */
  keysCondition(keys: string[][]): Expression<SqlBool>;
  cursorOf(row: Row): string[];
  keyOf(row: Row): string[];
  /** The row as a live write mirrors it: version = µs of updated_at, not deleted. */
  mirrored(row: Row): Mirrored;

  /**
   * Postgres computes the ClickHouse columns itself for the bulk copy: COPY
   * ... TO STDOUT prints them in its text format, which ClickHouse reads as
   * TabSeparated, so rows never become JavaScript objects. The values are
   * the row mapper's (version = µs of updated_at, not deleted); the jsonb
   * columns come last, as Postgres prints them, and are made compact on the
   * way (copy/jsonb-text.ts). test/integration/bulk-copy.spec.ts holds this
   * to line() for hostile rows, column by column.
   */
  copy: { columns: readonly string[]; select: RawBuilder<unknown>; jsonColumns: number };

  /** ClickHouse side. */
  line(record: Mirrored): string;
  mirroredKeyOf(record: Mirrored): string[];
  /** The line of a tombstone for this record's key at `version`: the mirror's own (its insert-line mapper). */
  tombstoneLine(record: Mirrored, version: bigint): string;
  /** A gap record's entry read back; throws, naming it, on one that is not of this table's two shapes. */
  readGapEntry(projectId: string, entry: unknown): GapEntry;
  /** The table's columns in the mapper's order: selected in it, a stored row serializes to its line. */
  clickHouseColumns: readonly string[];
  /** SELECT expressions that give a key as text, in gap-key order, and the mapping back. */
  clickHouseKeyColumns: string[];
  clickHouseKeyOf(texts: string[]): string[];
  /** A bound condition matching these keys (for a mutation), with its parameters. */
  clickHouseKeysCondition(keys: string[][]): { condition: string; params: Record<string, unknown> };
  readLive(client: ClickHouseClient, projectId: string, keys: string[][]): Promise<Mirrored[]>;
}

export const keyText = (key: string[]): string => key.join('/');

/**
 * Reads a table's gap entries: `keyLength` strings (recorded before entries
 * carried tombstones), or those, created_at and `fieldCount` tombstone fields.
 */
function gapEntryReader(
  keyLength: number,
  fieldCount: number,
  checkKey: (key: string[]) => void,
  tombstoneLine: (projectId: string, key: string[], createdAt: string, fields: string[], version: bigint) => string,
): HistoryEntity['readGapEntry'] {
  const fullLength = keyLength + 1 + fieldCount;
  return (projectId, entry) => {
    const named = `gap entry ${JSON.stringify(entry).slice(0, 200)}`;
    if (!Array.isArray(entry) || !entry.every((v) => typeof v === 'string') || (entry.length !== keyLength && entry.length !== fullLength)) {
      throw new Error(`${named} is not ${keyLength} strings (a key) or ${fullLength} (a key, its created_at and tombstone fields)`);
    }
    // Lower case, as Postgres gives ids back: replay compares keys as text.
    const key = entry.slice(0, keyLength).map((id) => id.toLowerCase());
    // Checked, and the line built once, here: a bad value fails the gap before the replay writes anything, not midway.
    try {
      checkKey(key);
      if (entry.length === keyLength) return { key, tombstone: null };
      const createdAt = entry[keyLength];
      const fields = entry.slice(keyLength + 1);
      // In full: the line's own conversion checks only a time's shape.
      isoToMicros(createdAt);
      tombstoneLine(projectId, key, createdAt, fields, 0n);
      return { key, tombstone: { createdAt, lineAt: (version) => tombstoneLine(projectId, key, createdAt, fields, version) } };
    } catch (error) {
      throw new Error(`${named}: ${errorText(error)}`);
    }
  };
}

const size = (column: string) => `coalesce(pg_column_size(${column}), 0)`;
/** Fixed columns (ids, times, names) as a flat allowance per row. */
const FIXED_ROW_BYTES = 400;

/** DateTime64(6) text: the session prints timestamps as ISO 'YYYY-MM-DD hh:mm:ss[.ffffff]' (see postgres-pool). */
const utcTime = (column: string) => `(${column} at time zone 'UTC')`;
/** 8 bytes as the unsigned 64-bit integer they spell (bigint is signed, so the high half is added back). */
const uint64 = (column: string) =>
  `(('x' || encode(${column}, 'hex'))::bit(64)::bigint::numeric + case when get_byte(${column}, 0) >= 128 then 18446744073709551616 else 0 end)`;
/** The live write's version: µs of updated_at (extract gives exact numeric seconds). */
const VERSION = `(extract(epoch from updated_at) * 1000000)::bigint`;

function copyOf(columns: Array<[clickhouse: string, postgres: string]>, jsonColumns: string[]): HistoryEntity['copy'] {
  const all = [...columns, ...jsonColumns.map((c): [string, string] => [c, `"${c}"`])];
  return { columns: all.map(([c]) => c), select: sql.raw(all.map(([, expr]) => expr).join(', ')), jsonColumns: jsonColumns.length };
}

export const spanHistory: HistoryEntity<SpanRow, MirroredSpan> = {
  name: 'spans',
  table: 'spans',
  keyset: [
    { column: 'created_at', bind: (v) => sql`${v}::timestamptz` },
    { column: 'project_id', bind: (v) => sql`${v}::uuid` },
    { column: 'trace_id', bind: (v) => sql`${v}::uuid` },
    { column: 'span_id', bind: (v) => sql`decode(${v}, 'hex')` },
  ],
  columns: [
    'project_id', 'trace_id', 'span_id', 'parent_id', 'trace_type', 'span_type', 'span_kind', 'span_name',
    'start_time', 'end_time', 'status_code', 'status_message', 'attributes', 'references', 'links', 'hashes',
    'events', 'exception', 'created_at', 'updated_at', 'created_by_id', 'updated_by_id',
  ],
  storedSize: sql.raw<number>(
    [size('attributes'), size('"references"'), size('links'), size('hashes'), size('events'), size('exception'), size('status_message'), FIXED_ROW_BYTES].join(' + '),
  ),
  keysCondition: (keys) => amongSpanKeys(keys.map(([trace_id, span_id]) => ({ trace_id, span_id }))),
  cursorOf: (row) => [row.created_at, row.project_id, row.trace_id, row.span_id.toString('hex')],
  keyOf: (row) => [uuidToTraceId(row.trace_id), row.span_id.toString('hex')],
  mirrored: (row) => {
    const span = spanFromRow(row) as MirroredSpan;
    span.version = isoToMicros(row.updated_at);
    span.deleted = false;
    return span;
  },

  copy: copyOf(
    [
      ['project_id', 'project_id'], ['trace_id', 'trace_id'], ['span_id', uint64('span_id')], ['parent_id', uint64('parent_id')],
      ['trace_type', 'trace_type'], ['span_type', 'span_type'], ['span_kind', 'span_kind'], ['span_name', 'span_name'],
      ['start_time', utcTime('start_time')], ['end_time', utcTime('end_time')], ['status_code', 'status_code'], ['status_message', 'status_message'],
      ['created_at', utcTime('created_at')], ['updated_at', utcTime('updated_at')], ['created_by_id', 'created_by_id'], ['updated_by_id', 'updated_by_id'],
      ['version', VERSION], ['is_deleted', '0'],
    ],
    ['attributes', 'references', 'links', 'hashes', 'events', 'exception'],
  ),
  line: toSpanClickHouseLine,
  mirroredKeyOf: (span) => [span.trace_id, span.span_id],
  tombstoneLine: (span, version) => toSpanInsertLine(spanTombstone(span, version)),
  readGapEntry: gapEntryReader(
    2,
    1,
    // The id mappers' own checks (a key-only entry builds no line to check them).
    ([trace, span]) => {
      traceIdToUuid(trace);
      spanIdToUInt64(span);
    },
    (project_id, [trace_id, span_id], created_at, [start_time], version) => {
      isoToMicros(start_time);
      return toSpanInsertLine(spanTombstone({ project_id, trace_id, span_id, created_at, start_time }, version));
    },
  ),
  clickHouseColumns: SPAN_COLUMNS,
  clickHouseKeyColumns: ['toString(trace_id)', 'toString(span_id)'],
  clickHouseKeyOf: ([trace, span]) => [uuidToTraceId(trace), uint64ToSpanId(span)],
  clickHouseKeysCondition: (keys) => ({
    condition: 'has(arrayZip({keyTraceIds:Array(UUID)}, {keySpanIds:Array(UInt64)}), (trace_id, span_id))',
    // bigint: the client writes it bare, as Array(UInt64) needs.
    params: { keyTraceIds: keys.map(([t]) => traceIdToUuid(t)), keySpanIds: keys.map(([, s]) => BigInt(spanIdToUInt64(s))) },
  }),
  readLive: (client, projectId, keys) =>
    new SpanMirrorReads(client).readSpans(
      projectId,
      keys.map(([trace_id, span_id]) => ({ trace_id, span_id })),
    ),
};

export const nodeHistory: HistoryEntity<NodeRow, MirroredNode> = {
  name: 'nodes',
  table: 'nodes',
  keyset: [
    { column: 'created_at', bind: (v) => sql`${v}::timestamptz` },
    { column: 'project_id', bind: (v) => sql`${v}::uuid` },
    { column: 'node_id', bind: (v) => sql`${v}::uuid` },
  ],
  columns: [
    'project_id', 'node_id', 'tree_id', 'root_id', 'parent_id', 'node_name', 'node_type', 'time_start', 'time_end',
    'status_code', 'status_message', 'data', 'metrics', 'meta', 'refs', 'exception', 'links', 'otel',
    'created_at', 'updated_at',
  ],
  storedSize: sql.raw<number>(
    [size('data'), size('metrics'), size('meta'), size('refs'), size('exception'), size('links'), size('otel'), size('status_message'), FIXED_ROW_BYTES].join(' + '),
  ),
  keysCondition: (keys) => sql<boolean>`node_id = any(${keys.map(([id]) => id)}::uuid[])`,
  cursorOf: (row) => [row.created_at, row.project_id, row.node_id],
  keyOf: (row) => [row.node_id],
  mirrored: (row) => {
    const node = nodeFromRow(row) as MirroredNode;
    node.version = isoToMicros(row.updated_at);
    node.deleted = false;
    return node;
  },

  copy: copyOf(
    [
      ['project_id', 'project_id'], ['node_id', 'node_id'], ['tree_id', 'tree_id'], ['root_id', 'root_id'], ['parent_id', 'parent_id'],
      ['node_name', 'node_name'], ['node_type', 'node_type'], ['time_start', utcTime('time_start')], ['time_end', utcTime('time_end')],
      ['status_code', 'status_code'], ['status_message', 'status_message'], ['created_at', utcTime('created_at')], ['updated_at', utcTime('updated_at')],
      ['version', VERSION], ['is_deleted', '0'],
    ],
    ['data', 'metrics', 'meta', 'refs', 'exception', 'links', 'otel'],
  ),
  line: toNodeClickHouseLine,
  mirroredKeyOf: (node) => [node.node_id],
  tombstoneLine: (node, version) => toNodeInsertLine(nodeTombstone(node, version)),
  readGapEntry: gapEntryReader(
    1,
    2,
    ([id]) => {
      if (!isUuid(id)) throw new Error(`node id "${id}" must be a UUID`);
    },
    (project_id, [node_id], created_at, [tree_id, time_start], version) => {
      // The node mapper passes uuids through, and ClickHouse would refuse the whole insert.
      if (!isUuid(tree_id)) throw new Error(`tree id "${tree_id}" must be a UUID`);
      isoToMicros(time_start);
      return toNodeInsertLine(nodeTombstone({ project_id, node_id, created_at, tree_id: tree_id.toLowerCase(), time_start }, version));
    },
  ),
  clickHouseColumns: NODE_COLUMNS,
  clickHouseKeyColumns: ['toString(node_id)'],
  clickHouseKeyOf: ([id]) => [id],
  clickHouseKeysCondition: (keys) => ({ condition: 'node_id IN {keyNodeIds:Array(UUID)}', params: { keyNodeIds: keys.map(([id]) => id) } }),
  readLive: (client, projectId, keys) =>
    new NodeMirrorReads(client).readNodes(
      projectId,
      keys.map(([id]) => id),
    ),
};

export function historyOf(entity: Entity): HistoryEntity {
  return (entity === 'spans' ? spanHistory : nodeHistory) as HistoryEntity;
}
