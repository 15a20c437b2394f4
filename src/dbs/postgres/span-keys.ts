import { Expression, sql, SqlBool } from 'kysely';
import { SpanKey } from '../../tracing/span';
import { traceIdToUuid } from '../../tracing/trace-id';
import { spanIdToBytes } from './span-row.mapper';

/**
 * The spans among `keys`, bound as two arrays: two parameters however many
 * keys there are. An IN list of row tuples binds two per key, and Postgres
 * takes at most 65,535, so a batch of more than 32,767 keys (MAX_BATCH_ITEMS
 * allows 100,000) failed as a protocol error; it also cost Postgres a plan as
 * long as the list (backfill's reads by key: 1,000 keys a statement read
 * ~3,000 keys/s). The DAO's reads and deletes by key and backfill's use it.
 */
export function amongSpanKeys(keys: readonly SpanKey[]): Expression<SqlBool> {
  return sql<SqlBool>`(trace_id, span_id) in (select * from unnest(${keys.map((k) => traceIdToUuid(k.trace_id))}::uuid[], ${keys.map((k) => spanIdToBytes(k.span_id))}::bytea[]))`;
}
