import { Kysely, sql } from 'kysely';

/**
 * Frozen in time (see 0001_initial). Analytics with focus trace measures a
 * trace on all its root spans (parent_id null): a span posted without a
 * parent is a root, so a trace can have several. This index holds the roots
 * alone, per trace in start order, so a trace's roots are found through it
 * rather than among every span of the trace.
 *
 * Inside the migration's transaction: writes to spans wait while it builds
 * (seconds per million spans). Spans with a parent are not in it, so it
 * costs their writes nothing.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createIndex('spans_trace_roots_idx')
    .on('spans')
    .columns(['project_id', 'trace_id', 'start_time', 'span_id'])
    .where(sql.ref('parent_id'), 'is', null)
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`set local lock_timeout = '5s'`.execute(db);
  await db.schema.dropIndex('spans_trace_roots_idx').execute();
  await sql`set local lock_timeout to default`.execute(db);
}
