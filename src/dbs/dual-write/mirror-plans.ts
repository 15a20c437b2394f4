import { ObservabilityDao } from '../../observability/observability.dao';
import { isoToMicros } from '../../tracing/timestamp';
import { TracingDao } from '../../tracing/tracing.dao';
import { NodeRecord, toNodeGapRow, toNodeInsertLine } from '../clickhouse/node-clickhouse-row.mapper';
import { SpanRecord, toSpanGapRow, toSpanInsertLine } from '../clickhouse/span-clickhouse-row.mapper';
import { MirrorPlan } from './mirrored-dao';

/**
 * Every write method of each port, and what it mirrors. Creates and updates
 * mirror the full committed row at version updated_at; deletes mirror a
 * tombstone at version deleted_at (microseconds; the Postgres DAOs make a
 * row's versions strictly increasing, and put a delete's just past the
 * deleted row's so a row re-created meanwhile outranks it).
 */

function upserted<Row extends { updated_at: string }>(row: Row): Row & { version: bigint; deleted: false } {
  return { ...row, version: isoToMicros(row.updated_at), deleted: false };
}

/** A delete reports keys only (DeletedSpan, DeletedNode), which is all a tombstone holds. */
function tombstone<Key extends { deleted_at: string }>(deleted: Key): Omit<Key, 'deleted_at'> & { version: bigint; deleted: true } {
  const { deleted_at, ...key } = deleted;
  return { ...key, version: isoToMicros(deleted_at), deleted: true };
}

export const spanMirrorPlan: MirrorPlan<TracingDao, SpanRecord> = {
  entity: 'spans',
  writes: {
    createSpans: upserted,
    updateSpans: upserted,
    deleteSpans: tombstone,
    deleteTraces: tombstone,
  },
  toGapRow: toSpanGapRow,
  toLine: toSpanInsertLine,
};

export const nodeMirrorPlan: MirrorPlan<ObservabilityDao, NodeRecord> = {
  entity: 'nodes',
  writes: {
    ingestNodes: upserted,
    deleteTrees: tombstone,
  },
  toGapRow: toNodeGapRow,
  toLine: toNodeInsertLine,
};
