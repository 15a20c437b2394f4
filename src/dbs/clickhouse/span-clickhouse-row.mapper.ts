import { Json, JsonObject, Span, SpanKey, SpanKind, SpanType, StatusCode, TraceType } from '../../tracing/span';
import { isoToMicros, microsToIso } from '../../tracing/timestamp';
import { traceIdToUuid, uuidToTraceId } from '../../tracing/trace-id';
import { GapRow } from './gap-ledger';

/**
 * The one mapping between the span and its ClickHouse row (JSONEachRow, as
 * written and as read back by SELECT ... FINAL). Ids are compact: the trace id
 * as a UUID, span ids as UInt64 (sent and read as decimal strings). Times are
 * DateTime64(6) text. JSON payloads are their JSON text: that is the stored
 * row (toSpanClickHouseRow, toSpanClickHouseLine: what verify compares and
 * what ClickHouse gives back), and the mirror's insert line
 * (toSpanInsertLine) is written so that ClickHouse stores exactly it.
 */

/** A live span as the mirror stores it: the row plus its version. */
export interface MirroredSpan extends Span {
  /** Microseconds of updated_at: the Postgres clock at this write. */
  version: bigint;
  deleted: false;
}

/**
 * A deleted span as the mirror stores it, at the delete's version: the
 * columns of the sort key (the row's identity for replacement; created_at
 * also picks its partition) and the one a skip index covers (start_time, as
 * the row last had it), so the granules a filter on it keeps hold the
 * tombstone wherever they hold the row's last version, as a full-row
 * tombstone would. Its other columns take the table's defaults: FINAL hides
 * a key whose newest row is a tombstone, and a filter written in WHERE runs
 * after FINAL. A filter on those columns before the versions are merged
 * (an explicit PREWHERE, or a GROUP BY key without FINAL filtered in its
 * WHERE) drops the tombstone and finds the deleted row (README, "Reading
 * the mirror").
 */
export interface SpanTombstone extends SpanKey {
  project_id: string;
  created_at: string;
  start_time: string;
  /** Microseconds of deleted_at: just past the deleted row's version. */
  version: bigint;
  deleted: true;
}

/** What the mirror writes for a span: its row, or its tombstone. */
export type SpanRecord = MirroredSpan | SpanTombstone;

/** The tombstone of this span at `version`: the columns SpanTombstone holds, whatever else `span` carries. */
export function spanTombstone(span: Omit<SpanTombstone, 'version' | 'deleted'>, version: bigint): SpanTombstone {
  const { project_id, trace_id, span_id, created_at, start_time } = span;
  return { project_id, trace_id, span_id, created_at, start_time, version, deleted: true };
}

export interface SpanClickHouseRow {
  project_id: string;
  trace_id: string;
  span_id: string;
  parent_id: string | null;
  trace_type: string;
  span_type: string;
  span_kind: string;
  span_name: string;
  start_time: string;
  end_time: string;
  status_code: string;
  status_message: string | null;
  attributes: string;
  references: string | null;
  links: string | null;
  hashes: string | null;
  events: string | null;
  exception: string | null;
  created_at: string;
  updated_at: string;
  created_by_id: string | null;
  updated_by_id: string | null;
  version: string;
  is_deleted: number;
}

export const SPAN_TABLE = 'spans';

/** The columns, in table order, for SELECT lists (never `*`, so new columns cannot break reads). */
export const SPAN_COLUMNS = [
  'project_id', 'trace_id', 'span_id', 'parent_id', 'trace_type', 'span_type', 'span_kind', 'span_name',
  'start_time', 'end_time', 'status_code', 'status_message', 'attributes', 'references', 'links', 'hashes',
  'events', 'exception', 'created_at', 'updated_at', 'created_by_id', 'updated_by_id', 'version', 'is_deleted',
] as const;

const HEX_SPAN_ID = /^[0-9a-f]{16}$/i;
const UINT64 = /^\d{1,20}$/;
const CLICKHOUSE_TIME = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})\.(\d{6})$/;

/** 16 hex characters to the unsigned 64-bit integer they spell, as a decimal string. */
export function spanIdToUInt64(spanId: string): string {
  if (!HEX_SPAN_ID.test(spanId)) throw new Error(`span id must be 16 hex characters, got "${spanId}"`);
  return BigInt(`0x${spanId}`).toString(10);
}

export function uint64ToSpanId(value: string): string {
  if (!UINT64.test(value)) throw new Error(`expected a UInt64 as a decimal string, got "${value}"`);
  return BigInt(value).toString(16).padStart(16, '0');
}

const NORMALIZED_ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

/** ISO-8601 (any zone) to DateTime64(6, 'UTC') text, without going through a JS Date. */
export function isoToClickHouseTime(iso: string): string {
  // Every stored time is already normalized (UTC, six digits): a slice is enough, and this runs four times per row.
  if (NORMALIZED_ISO.test(iso)) return `${iso.slice(0, 10)} ${iso.slice(11, 26)}`;
  const utc = microsToIso(isoToMicros(iso));
  return `${utc.slice(0, 10)} ${utc.slice(11, 26)}`;
}

export function clickHouseTimeToIso(text: string): string {
  const m = CLICKHOUSE_TIME.exec(text);
  if (!m) throw new Error(`expected DateTime64(6) text "YYYY-MM-DD hh:mm:ss.ffffff", got "${text}"`);
  return `${m[1]}T${m[2]}.${m[3]}Z`;
}

export const jsonText = (value: Json | null): string | null => (value === null ? null : JSON.stringify(value));

/**
 * A JSON column's value in an insert line: an object or array as itself, and
 * ClickHouse stores its text (ClickHouseSink inserts with
 * input_format_json_read_objects_as_strings and ..._arrays_as_strings, which
 * copy the value's text as it stands in the line). Written as a string
 * instead, the JSON text is built and then escaped a second time: with ~1 KB
 * of attributes a span's line took ~17 µs, and takes ~12.5 this way. Scalars,
 * which Json allows but no payload uses, go as their JSON text, so the
 * stored text is jsonText's either way.
 */
export const insertJson = (value: Json | null): Json | null => (value !== null && typeof value === 'object' ? value : jsonText(value));
export const parseJson = <T>(text: string | null): T | null => (text === null ? null : (JSON.parse(text) as T));

/** The span's columns, its JSON payloads encoded by `json`: as text (the stored row) or as themselves (the insert line). */
function spanColumns<J>(span: MirroredSpan, json: (value: Json | null) => J) {
  return {
    project_id: span.project_id,
    trace_id: traceIdToUuid(span.trace_id),
    span_id: spanIdToUInt64(span.span_id),
    parent_id: span.parent_id === null ? null : spanIdToUInt64(span.parent_id),
    trace_type: span.trace_type,
    span_type: span.span_type,
    span_kind: span.span_kind,
    span_name: span.span_name,
    start_time: isoToClickHouseTime(span.start_time),
    end_time: isoToClickHouseTime(span.end_time),
    status_code: span.status_code,
    status_message: span.status_message,
    attributes: json(span.attributes),
    references: json(span.references),
    links: json(span.links),
    hashes: json(span.hashes),
    events: json(span.events),
    exception: json(span.exception),
    created_at: isoToClickHouseTime(span.created_at),
    updated_at: isoToClickHouseTime(span.updated_at),
    created_by_id: span.created_by_id,
    updated_by_id: span.updated_by_id,
    version: span.version.toString(10),
    is_deleted: 0,
  };
}

/** A tombstone's columns: the sort key, the skip-indexed start_time and the version (the rest take the table's defaults). */
function tombstoneColumns(tombstone: SpanTombstone) {
  return {
    project_id: tombstone.project_id,
    trace_id: traceIdToUuid(tombstone.trace_id),
    span_id: spanIdToUInt64(tombstone.span_id),
    start_time: isoToClickHouseTime(tombstone.start_time),
    created_at: isoToClickHouseTime(tombstone.created_at),
    version: tombstone.version.toString(10),
    is_deleted: 1,
  };
}

/** The span's row as ClickHouse stores it and gives it back. */
export function toSpanClickHouseRow(span: MirroredSpan): SpanClickHouseRow {
  // attributes is never null, so its text is never null.
  return spanColumns(span, jsonText) as SpanClickHouseRow;
}

/** The stored row as one JSONEachRow line, no trailing newline: what ClickHouse gives back for this span. */
export function toSpanClickHouseLine(span: MirroredSpan): string {
  return JSON.stringify(toSpanClickHouseRow(span));
}

/**
 * The JSONEachRow line the mirror inserts (no trailing newline): for a live
 * span, ClickHouseSink stores it as toSpanClickHouseLine's row; for a
 * tombstone, the columns SpanTombstone holds.
 */
export function toSpanInsertLine(span: SpanRecord): string {
  return JSON.stringify(span.deleted ? tombstoneColumns(span) : spanColumns(span, insertJson));
}

/** What a gap record needs of this span: everything the batch writer queues but the line. */
export function toSpanGapRow(span: SpanRecord): GapRow {
  return {
    table: SPAN_TABLE,
    entity: 'spans',
    projectId: span.project_id,
    key: [span.trace_id, span.span_id],
    createdAt: span.created_at,
    tombstoneFields: [span.start_time],
  };
}

/** A live row as read back (every read is FINAL with is_deleted = 0: a tombstone here is a bug in the query). */
export function fromSpanClickHouseRow(row: SpanClickHouseRow): MirroredSpan {
  if (Number(row.is_deleted) !== 0) throw new Error(`expected a live span row, got a tombstone of ${row.trace_id}/${row.span_id}`);
  return {
    project_id: row.project_id,
    trace_id: uuidToTraceId(row.trace_id),
    span_id: uint64ToSpanId(row.span_id),
    parent_id: row.parent_id === null ? null : uint64ToSpanId(row.parent_id),
    trace_type: row.trace_type as TraceType,
    span_type: row.span_type as SpanType,
    span_kind: row.span_kind as SpanKind,
    span_name: row.span_name,
    start_time: clickHouseTimeToIso(row.start_time),
    end_time: clickHouseTimeToIso(row.end_time),
    status_code: row.status_code as StatusCode,
    status_message: row.status_message,
    attributes: JSON.parse(row.attributes) as JsonObject,
    references: parseJson<Json[]>(row.references),
    links: parseJson<Json[]>(row.links),
    hashes: parseJson<Json[]>(row.hashes),
    events: parseJson<Json[]>(row.events),
    exception: parseJson<JsonObject>(row.exception),
    created_at: clickHouseTimeToIso(row.created_at),
    updated_at: clickHouseTimeToIso(row.updated_at),
    created_by_id: row.created_by_id,
    updated_by_id: row.updated_by_id,
    version: BigInt(row.version),
    deleted: false,
  };
}
