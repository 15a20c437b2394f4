import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { OperatorError } from '../../config/operator-error';
import { DEFAULT_MIGRATION_TABLE, FileMigrationProvider, Kysely, MigrationResult, MigrationResultSet, Migrator, sql } from 'kysely';

/** Kysely's Migrator over migrations/postgres (compiled .js or source .ts). */
export const POSTGRES_MIGRATIONS_DIR = path.resolve(__dirname, '../../../migrations/postgres');

/**
 * The schema Kysely keeps its bookkeeping tables in: the connection's current
 * one, named outright. Left unnamed, Kysely takes a kysely_migration table in
 * any schema for its own and then reads the one search_path finds, so another
 * app's migrations in another schema of the same database would break ours.
 */
async function migrationSchema(db: Kysely<any>): Promise<string | undefined> {
  const { rows } = await sql<{ schema: string | null }>`select current_schema() as schema`.execute(db);
  return rows[0].schema ?? undefined;
}

export async function createMigrator(db: Kysely<any>, folder = POSTGRES_MIGRATIONS_DIR): Promise<Migrator> {
  return migratorIn(db, await migrationSchema(db), folder);
}

function migratorIn(db: Kysely<any>, schema: string | undefined, folder: string): Migrator {
  return new Migrator({ db, provider: new FileMigrationProvider({ fs, path, migrationFolder: folder }), migrationTableSchema: schema });
}

/** A migration run that failed; `completed` names the migrations it applied or reverted before (each committed on its own). */
export class PostgresMigrationError extends Error {
  constructor(message: string, readonly completed: string[]) {
    super(message);
    this.name = 'PostgresMigrationError';
  }
}

function raise(result: MigrationResultSet): MigrationResultSet {
  if (result.error) {
    const failed = result.results?.find((r) => r.status === 'Error');
    const cause = result.error instanceof Error ? result.error.message : String(result.error);
    const completed = result.results?.filter((r) => r.status === 'Success') ?? [];
    const before = completed.length
      ? ` (${completed[0].direction === 'Up' ? 'applied' : 'reverted'} before it: ${completed.map((r) => r.migrationName).join(', ')})`
      : '';
    // Kysely refuses some runs (a corrupted history, a lock) before any migration starts: there is no migration to name then.
    throw new PostgresMigrationError(
      failed ? `Postgres migration ${failed.migrationName} failed: ${cause}${before}` : `Postgres migrations could not run: ${cause}${before}`,
      completed.map((r) => r.migrationName),
    );
  }
  return result;
}

/**
 * Applies the pending migrations one at a time, each in a transaction of its
 * own (Kysely's migrateToLatest runs them all in one). A step's locks end at
 * its commit: 0002's exclusive lock on nodes is not held while 0003 builds an
 * index on spans, which would keep every read and write of nodes waiting that
 * long, and deadlock with an OTLP export holding spans and waiting on nodes.
 * A failure leaves the steps before it applied; the next run goes on from it.
 */
export async function migrateToLatest(db: Kysely<any>, folder = POSTGRES_MIGRATIONS_DIR): Promise<MigrationResultSet> {
  const migrator = await createMigrator(db, folder);
  return inSteps(() => migrator.migrateUp());
}

/**
 * Runs `step` (one migration up or down, in a transaction of its own) until it has nothing left to do, or one
 * fails (raised, naming the steps before it), or one is not done (a migration without a down step is
 * NotExecuted: the run stops there).
 */
async function inSteps(step: () => Promise<MigrationResultSet>): Promise<MigrationResultSet> {
  const results: MigrationResult[] = [];
  for (;;) {
    const done = await step();
    results.push(...(done.results ?? []));
    if (done.error !== undefined) return raise({ error: done.error, results });
    if (!done.results?.length || done.results.some((r) => r.status !== 'Success')) return { results };
  }
}

/** Migrations `migrate down` would undo that have no down step: nothing was undone. */
export class NoDownStepError extends OperatorError {
  constructor(readonly migrations: string[]) {
    const one = migrations.length === 1;
    super(`cannot migrate down: ${migrations.join(', ')} ${one ? 'has' : 'have'} no down step, so ${one ? 'it' : 'they'} cannot be undone. Nothing was undone.`);
    this.name = 'NoDownStepError';
  }
}

export async function migrateDown(db: Kysely<any>, all = false, folder = POSTGRES_MIGRATIONS_DIR): Promise<MigrationResultSet> {
  const migrator = await createMigrator(db, folder);
  // Kysely skips a migration without a down step (NotExecuted) and would go on to the ones beneath it: the
  // history would then say the skipped one is applied over a schema that no longer has what it was built on.
  // Refused whole, before anything runs, so nothing is undone part-way.
  const executed = (await migrator.getMigrations()).filter((m) => m.executedAt !== undefined).reverse();
  const undoing = all ? executed : executed.slice(0, 1);
  const withoutDown = undoing.filter((m) => typeof m.migration.down !== 'function').map((m) => m.name);
  if (withoutDown.length) throw new NoDownStepError(withoutDown);
  if (!all) return raise(await migrator.migrateDown());
  // One step at a time, each in its own transaction (as migrateToLatest): one step's locks end before the next
  // takes its own. A migration without a down step applied since the look above (another migrator) is
  // NotExecuted and stays in the history: the run stops there, leaving it and those beneath it applied.
  return inSteps(() => migrator.migrateDown());
}

/** Where a database's schema stands against this build's migrations. */
export interface SchemaState {
  /** This build's migrations, in order, with when the database ran each (undefined: not yet). */
  migrations: Array<{ name: string; executedAt?: Date }>;
  /** This build's migrations the database has not run, in order. */
  pending: string[];
  /** Migrations the database has run that this build does not know: a newer build migrated it. */
  unknown: string[];
}

/** The database has not run migrations this build needs, and this process may not run them. */
export class SchemaBehindError extends OperatorError {
  constructor(readonly pending: string[]) {
    super(
      `the Postgres schema is behind this build: pending migrations ${pending.join(', ')}. ` +
        'Run `npm run migrate` (or set MIGRATE_ON_START=true), then try again.',
    );
    this.name = 'SchemaBehindError';
  }
}

export async function schemaState(db: Kysely<any>, folder = POSTGRES_MIGRATIONS_DIR): Promise<SchemaState> {
  const schema = await migrationSchema(db);
  if (schema === undefined) {
    const { rows } = await sql<{ path: string }>`select current_setting('search_path') as path`.execute(db);
    throw new NoSchemaError(rows[0].path);
  }
  const migrations = await migratorIn(db, schema, folder).getMigrations();
  const known = new Set(migrations.map((m) => m.name));
  const { rows } = await sql<{ exists: boolean }>`
    select exists (select 1 from information_schema.tables where table_schema = ${schema ?? null} and table_name = ${DEFAULT_MIGRATION_TABLE}) as exists`.execute(db);
  const executed = rows[0].exists
    ? (await db.withSchema(schema).selectFrom(DEFAULT_MIGRATION_TABLE).select('name').orderBy('name').execute()).map((r) => r.name as string)
    : [];
  if (executed.length === 0 && migrations.length > 0) await refuseTablesElsewhere(db, schema, migrations[0].name);
  return {
    migrations: migrations.map(({ name, executedAt }) => ({ name, executedAt })),
    pending: migrations.filter((m) => !m.executedAt).map((m) => m.name),
    unknown: executed.filter((name) => !known.has(name)),
  };
}

/**
 * This API's tables, migrated, in another schema than the connection's
 * current one, which has none. A schema made since that comes first in the
 * search_path (`CREATE SCHEMA AUTHORIZATION <user>`, the usual step after
 * Postgres 15 took CREATE on public from ordinary users) turned every
 * migration pending again: migrated, the API served new empty tables there,
 * every key refused and the data seemingly gone.
 */
export class TablesInAnotherSchemaError extends OperatorError {
  constructor(current: string, elsewhere: string) {
    const quoted = `"${elsewhere.replace(/"/g, '""')}"`;
    super(
      `this connection's current schema "${current}" holds none of this API's tables, while schema "${elsewhere}", after it in search_path, ` +
        'holds them, migrated: the first schema was made since (one named after the user?). Migrating would make new, empty tables there. ' +
        `Put ${quoted} first in search_path (ALTER ROLE <user> SET search_path TO ${quoted}, or options=-c search_path=... in DATABASE_URL), or move the tables`,
    );
    this.name = 'TablesInAnotherSchemaError';
  }
}

/**
 * search_path names no schema this role can use (none exists, or it lacks USAGE on them): nothing could be
 * found or created, and Kysely's and Postgres's errors do not say why.
 */
export class NoSchemaError extends OperatorError {
  constructor(searchPath: string) {
    super(
      `search_path (${searchPath}) names no schema that exists in this database and this role may use (USAGE), so there is nowhere ` +
        "to find or make this API's tables: name the schema that holds them (public unless you chose another) in search_path, or grant USAGE on it",
    );
    this.name = 'NoSchemaError';
  }
}

async function refuseTablesElsewhere(db: Kysely<any>, current: string, firstMigration: string): Promise<void> {
  // Only schemas search_path reaches: a deployment of its own in another schema (search_path set to it alone)
  // is not this one's. Another app's Kysely migrations may live in one: only a schema with our first
  // migration applied and our spans table is ours.
  const { rows } = await sql<{ schema: string }>`
    select m.table_schema as schema from information_schema.tables m
    join information_schema.tables s on s.table_schema = m.table_schema and s.table_name = 'spans'
    where m.table_name = ${DEFAULT_MIGRATION_TABLE} and m.table_schema <> ${current}
      and m.table_schema = any(current_schemas(false)::text[])
    order by array_position(current_schemas(false)::text[], m.table_schema::text)`.execute(db);
  for (const { schema } of rows) {
    const ran = await db.withSchema(schema).selectFrom(DEFAULT_MIGRATION_TABLE).select('name').where('name', '=', firstMigration).executeTakeFirst();
    if (ran) throw new TablesInAnotherSchemaError(current, schema);
  }
}

/**
 * The database's encoding, before anything is migrated into it, by the API and by every command that migrates.
 * Spans carry any Unicode text. In another encoding (LATIN1) a name outside it failed at the insert, as a 400
 * quoting Postgres, for a request the API had validated: refused once, with what to do. SQL_ASCII stores the
 * API's UTF-8 as the bytes it is (an embedded cluster initialised without a locale before its initdb was told
 * UTF8 has it): used, with a warning. `where` names the server in messages (its URL, without the password).
 */
async function checkEncoding(db: Kysely<any>, where: string, warn: (line: string) => void): Promise<void> {
  const { rows } = await sql<{ server_encoding: string }>`show server_encoding`.execute(db);
  const encoding = rows[0]?.server_encoding;
  if (encoding === 'SQL_ASCII') {
    warn(`the Postgres database at ${where} is encoded SQL_ASCII: it stores text as bytes, unchecked; a database created with ENCODING 'UTF8' checks it`);
  } else if (encoding !== 'UTF8') {
    throw new OperatorError(
      `the Postgres database at ${where} is encoded ${encoding}, which cannot hold every text a span may carry: use a database created with ENCODING 'UTF8'`,
    );
  }
}

/**
 * Makes a database's schema this build's before a process uses it: applies
 * pending migrations when `migrate` (MIGRATE_ON_START), else refuses with
 * SchemaBehindError, instead of failing later on a missing table. A database
 * a newer build migrated is used as it is (README "Migrations": a release's
 * migration only adds what the release before can ignore); Kysely's migrator
 * would call it corrupted, so migrateToLatest runs only when something of
 * this build's is pending.
 * The database's encoding is checked first (checkEncoding, which takes `where` and `warn`).
 */
export async function prepareSchema(
  db: Kysely<any>,
  migrate: boolean,
  options: { where: string; warn: (line: string) => void },
): Promise<{ applied: string[]; unknown: string[] }> {
  await checkEncoding(db, options.where, options.warn);
  const { pending, unknown } = await schemaState(db);
  if (pending.length === 0) return { applied: [], unknown };
  if (!migrate) throw new SchemaBehindError(pending);
  try {
    const result = await migrateToLatest(db);
    return { applied: result.results?.map((r) => r.migrationName) ?? [], unknown };
  } catch (error) {
    // A newer build starting beside this one may have migrated between the look above and Kysely's lock (or
    // between two of this run's steps); Kysely then calls the history corrupted. What counts is whether anything
    // of this build's is pending.
    const now = await schemaState(db);
    const applied = error instanceof PostgresMigrationError ? error.completed : [];
    if (now.pending.length === 0) return { applied, unknown: now.unknown };
    throw error;
  }
}
