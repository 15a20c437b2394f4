/**
 * The span, as the API and every storage adapter see it. Field names are the
 * wire names (snake_case). Times are ISO-8601 strings with microseconds
 * ("2026-11-22T10:00:00.123456Z"): a JS Date would drop the microseconds that
 * cursors, versions and the Postgres/ClickHouse comparison depend on.
 */

export const TRACE_TYPES = ['invocation', 'annotation', 'unknown'] as const;
export const SPAN_TYPES = [
  'agent', 'chain', 'workflow', 'task', 'tool', 'embedding', 'query',
  'llm', 'completion', 'chat', 'rerank', 'unknown',
] as const;
export const SPAN_KINDS = [
  'SPAN_KIND_UNSPECIFIED', 'SPAN_KIND_INTERNAL', 'SPAN_KIND_SERVER',
  'SPAN_KIND_CLIENT', 'SPAN_KIND_PRODUCER', 'SPAN_KIND_CONSUMER',
] as const;
export const STATUS_CODES = ['STATUS_CODE_UNSET', 'STATUS_CODE_OK', 'STATUS_CODE_ERROR'] as const;

export type TraceType = (typeof TRACE_TYPES)[number];
export type SpanType = (typeof SPAN_TYPES)[number];
export type SpanKind = (typeof SPAN_KINDS)[number];
export type StatusCode = (typeof STATUS_CODES)[number];

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** What a caller supplies to create or replace a span. */
export interface SpanInput {
  trace_id: string;
  span_id: string;
  parent_id: string | null;
  trace_type: TraceType;
  span_type: SpanType;
  span_kind: SpanKind;
  span_name: string;
  start_time: string;
  end_time: string;
  status_code: StatusCode;
  status_message: string | null;
  attributes: JsonObject;
  references: Json[] | null;
  links: Json[] | null;
  hashes: Json[] | null;
  events: Json[] | null;
  exception: JsonObject | null;
}

/** A stored span: the input plus ownership and bookkeeping. */
export interface Span extends SpanInput {
  project_id: string;
  created_at: string;
  updated_at: string;
  created_by_id: string | null;
  updated_by_id: string | null;
}

export interface SpanKey {
  trace_id: string;
  span_id: string;
}

/**
 * What a delete reports of each span it removed: what its ClickHouse
 * tombstone must carry (see SpanTombstone) and the delete's row version
 * (just past the span's last; see PostgresTracingDao). Never the payload:
 * deleting a trace of a million spans holds a million of these, not a
 * million rows of attributes.
 */
export interface DeletedSpan extends SpanKey {
  project_id: string;
  created_at: string;
  start_time: string;
  deleted_at: string;
}
