import { DeletedSpan, Json, JsonObject, Span, SpanInput, SpanKind, SpanType, StatusCode, TraceType } from '../../tracing/span';
import { traceIdToUuid, uuidToTraceId } from '../../tracing/trace-id';
import { NewSpanRow, SpanRow } from './database';

/**
 * The one mapping between the span and its Postgres row. Ids travel as hex
 * on the wire and compactly in Postgres: trace_id as uuid, span ids as 8-byte
 * bytea.
 */

export function spanIdToBytes(spanId: string): Buffer {
  return Buffer.from(spanId, 'hex');
}

export function bytesToSpanId(bytes: Buffer): string {
  return bytes.toString('hex');
}

const jsonText = (value: Json | null): string | null => (value === null ? null : JSON.stringify(value));

export function spanToRow(
  projectId: string,
  span: SpanInput,
  userId: string | null,
): Omit<NewSpanRow, 'created_at' | 'updated_at'> {
  return {
    project_id: projectId,
    trace_id: traceIdToUuid(span.trace_id),
    span_id: spanIdToBytes(span.span_id),
    parent_id: span.parent_id === null ? null : spanIdToBytes(span.parent_id),
    trace_type: span.trace_type,
    span_type: span.span_type,
    span_kind: span.span_kind,
    span_name: span.span_name,
    start_time: span.start_time,
    end_time: span.end_time,
    status_code: span.status_code,
    status_message: span.status_message,
    attributes: JSON.stringify(span.attributes),
    references: jsonText(span.references),
    links: jsonText(span.links),
    hashes: jsonText(span.hashes),
    events: jsonText(span.events),
    exception: jsonText(span.exception),
    created_by_id: userId,
    updated_by_id: userId,
  };
}

export function spanFromRow(row: SpanRow): Span {
  return {
    project_id: row.project_id,
    trace_id: uuidToTraceId(row.trace_id),
    span_id: bytesToSpanId(row.span_id),
    parent_id: row.parent_id === null ? null : bytesToSpanId(row.parent_id),
    trace_type: row.trace_type as TraceType,
    span_type: row.span_type as SpanType,
    span_kind: row.span_kind as SpanKind,
    span_name: row.span_name,
    start_time: row.start_time,
    end_time: row.end_time,
    status_code: row.status_code as StatusCode,
    status_message: row.status_message,
    attributes: row.attributes as JsonObject,
    references: row.references as Json[] | null,
    links: row.links as Json[] | null,
    hashes: row.hashes as Json[] | null,
    events: row.events as Json[] | null,
    exception: row.exception as JsonObject | null,
    created_at: row.created_at,
    updated_at: row.updated_at,
    created_by_id: row.created_by_id,
    updated_by_id: row.updated_by_id,
  };
}

/** The columns a delete returns: what DeletedSpan reports (its deleted_at is computed by the DAO). */
export const DELETED_SPAN_COLUMNS = ['project_id', 'trace_id', 'span_id', 'created_at', 'start_time'] as const;

export function deletedSpanFromRow(row: Pick<SpanRow, (typeof DELETED_SPAN_COLUMNS)[number]> & { deleted_at: string }): DeletedSpan {
  return {
    project_id: row.project_id,
    trace_id: uuidToTraceId(row.trace_id),
    span_id: bytesToSpanId(row.span_id),
    created_at: row.created_at,
    start_time: row.start_time,
    deleted_at: row.deleted_at,
  };
}
