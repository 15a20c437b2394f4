import { Kysely, sql } from 'kysely';

/**
 * Frozen in time (see 0001_initial). Node queries page newest time_start
 * first, then node_id ascending; indexes in that order, per project and per
 * tree, let a page start at its cursor and stop after its limit. The
 * (project_id, tree_id) and (project_id, time_start) indexes they replace
 * made every page of a tree read and sort the whole tree.
 *
 * Inside the migration's transaction: writes to nodes wait while the
 * indexes build (seconds per million nodes), and the drops need nodes to
 * themselves until the commit that follows them. A drop waiting behind a
 * long read (a backfill or verify of nodes) would hold every later read and
 * write of nodes behind it, so it waits at most 5 s and then fails the
 * migration, which changes nothing and can be run again.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('nodes_project_tree_page_idx').on('nodes').columns(['project_id', 'tree_id', 'time_start desc', 'node_id']).execute();
  await db.schema.createIndex('nodes_project_page_idx').on('nodes').columns(['project_id', 'time_start desc', 'node_id']).execute();
  await sql`set local lock_timeout = '5s'`.execute(db);
  await db.schema.dropIndex('nodes_project_tree_idx').execute();
  await db.schema.dropIndex('nodes_project_start_idx').execute();
  // A later migration in the same transaction (builds that ran a run's migrations in one) must not inherit the timeout.
  await sql`set local lock_timeout to default`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('nodes_project_tree_idx').on('nodes').columns(['project_id', 'tree_id']).execute();
  await db.schema.createIndex('nodes_project_start_idx').on('nodes').columns(['project_id', 'time_start']).execute();
  await sql`set local lock_timeout = '5s'`.execute(db);
  await db.schema.dropIndex('nodes_project_tree_page_idx').execute();
  await db.schema.dropIndex('nodes_project_page_idx').execute();
  await sql`set local lock_timeout to default`.execute(db);
}
