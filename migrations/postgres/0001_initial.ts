import { Kysely, sql } from 'kysely';

/**
 * Frozen in time: this file uses Kysely<any> and imports nothing from the app,
 * so later changes to the app cannot change what it did.
 *
 * Timestamps are timestamptz (microsecond precision). Ids are stored
 * compactly: trace ids as uuid (16 bytes), span ids as 8-byte bytea.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('spans')
    .addColumn('project_id', 'uuid', (c) => c.notNull())
    .addColumn('trace_id', 'uuid', (c) => c.notNull())
    .addColumn('span_id', 'bytea', (c) => c.notNull().check(sql`octet_length(span_id) = 8`))
    .addColumn('parent_id', 'bytea', (c) => c.check(sql`parent_id is null or octet_length(parent_id) = 8`))
    .addColumn('trace_type', 'text', (c) => c.notNull())
    .addColumn('span_type', 'text', (c) => c.notNull())
    .addColumn('span_kind', 'text', (c) => c.notNull())
    .addColumn('span_name', 'text', (c) => c.notNull())
    .addColumn('start_time', 'timestamptz', (c) => c.notNull())
    .addColumn('end_time', 'timestamptz', (c) => c.notNull())
    .addColumn('status_code', 'text', (c) => c.notNull())
    .addColumn('status_message', 'text')
    .addColumn('attributes', 'jsonb', (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .addColumn('references', 'jsonb')
    .addColumn('links', 'jsonb')
    .addColumn('hashes', 'jsonb')
    .addColumn('events', 'jsonb')
    .addColumn('exception', 'jsonb')
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`clock_timestamp()`))
    .addColumn('updated_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`clock_timestamp()`))
    .addColumn('created_by_id', 'uuid')
    .addColumn('updated_by_id', 'uuid')
    .addPrimaryKeyConstraint('spans_pk', ['project_id', 'trace_id', 'span_id'])
    .execute();
  // Query windows and analytics scan a project's spans by start time.
  await db.schema.createIndex('spans_project_start_idx').on('spans').columns(['project_id', 'start_time', 'trace_id', 'span_id']).execute();
  // Backfill and verify page by the immutable creation time (keyset cursor).
  await db.schema.createIndex('spans_created_key_idx').on('spans').columns(['created_at', 'project_id', 'trace_id', 'span_id']).execute();

  await db.schema
    .createTable('nodes')
    .addColumn('project_id', 'uuid', (c) => c.notNull())
    .addColumn('node_id', 'uuid', (c) => c.notNull())
    .addColumn('tree_id', 'uuid', (c) => c.notNull())
    .addColumn('root_id', 'uuid')
    .addColumn('parent_id', 'uuid')
    .addColumn('node_name', 'text', (c) => c.notNull())
    .addColumn('node_type', 'text', (c) => c.notNull())
    .addColumn('time_start', 'timestamptz', (c) => c.notNull())
    .addColumn('time_end', 'timestamptz', (c) => c.notNull())
    .addColumn('status_code', 'text', (c) => c.notNull())
    .addColumn('status_message', 'text')
    .addColumn('data', 'jsonb')
    .addColumn('metrics', 'jsonb')
    .addColumn('meta', 'jsonb')
    .addColumn('refs', 'jsonb')
    .addColumn('exception', 'jsonb')
    .addColumn('links', 'jsonb')
    .addColumn('otel', 'jsonb')
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`clock_timestamp()`))
    .addColumn('updated_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`clock_timestamp()`))
    .addPrimaryKeyConstraint('nodes_pk', ['project_id', 'node_id'])
    .execute();
  await db.schema.createIndex('nodes_project_tree_idx').on('nodes').columns(['project_id', 'tree_id']).execute();
  await db.schema.createIndex('nodes_project_start_idx').on('nodes').columns(['project_id', 'time_start']).execute();
  await db.schema.createIndex('nodes_created_key_idx').on('nodes').columns(['created_at', 'project_id', 'node_id']).execute();

  await db.schema
    .createTable('api_keys')
    .addColumn('id', 'uuid', (c) => c.primaryKey().defaultTo(sql`gen_random_uuid()`))
    .addColumn('project_id', 'uuid', (c) => c.notNull())
    .addColumn('prefix', 'text', (c) => c.notNull())
    .addColumn('key_hash', 'text', (c) => c.notNull().unique())
    .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('revoked_at', 'timestamptz')
    .execute();

  await db.schema
    .createTable('mirror_gaps')
    .addColumn('id', 'bigserial', (c) => c.primaryKey())
    .addColumn('entity', 'text', (c) => c.notNull())
    .addColumn('project_id', 'uuid', (c) => c.notNull())
    .addColumn('keys', 'jsonb', (c) => c.notNull())
    .addColumn('row_count', 'integer', (c) => c.notNull())
    .addColumn('min_created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('max_created_at', 'timestamptz', (c) => c.notNull())
    .addColumn('reason', 'text', (c) => c.notNull())
    .addColumn('recorded_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('replayed_at', 'timestamptz')
    .execute();
  await db.schema.createIndex('mirror_gaps_open_idx').on('mirror_gaps').column('id').where(sql.ref('replayed_at'), 'is', null).execute();

  await db.schema
    .createTable('backfill_checkpoints')
    .addColumn('run_key', 'text', (c) => c.primaryKey())
    .addColumn('entity', 'text', (c) => c.notNull())
    .addColumn('scope', 'jsonb', (c) => c.notNull())
    .addColumn('cursor', 'jsonb')
    .addColumn('rows_copied', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('started_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('updated_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('finished_at', 'timestamptz')
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const table of ['backfill_checkpoints', 'mirror_gaps', 'api_keys', 'nodes', 'spans']) {
    await db.schema.dropTable(table).ifExists().execute();
  }
}
