import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { FileMigrationProvider, Kysely, MigrationResultSet, Migrator, NO_MIGRATIONS } from 'kysely';

/** Kysely's Migrator over migrations/postgres (compiled .js or source .ts). */
export const POSTGRES_MIGRATIONS_DIR = path.resolve(__dirname, '../../../migrations/postgres');

export function createMigrator(db: Kysely<any>, folder = POSTGRES_MIGRATIONS_DIR): Migrator {
  return new Migrator({ db, provider: new FileMigrationProvider({ fs, path, migrationFolder: folder }) });
}

function raise(result: MigrationResultSet): MigrationResultSet {
  if (result.error) {
    const failed = result.results?.find((r) => r.status === 'Error');
    const cause = result.error instanceof Error ? result.error.message : String(result.error);
    throw new Error(`Postgres migration ${failed?.migrationName ?? ''} failed: ${cause}`);
  }
  return result;
}

export async function migrateToLatest(db: Kysely<any>): Promise<MigrationResultSet> {
  return raise(await createMigrator(db).migrateToLatest());
}

export async function migrateDown(db: Kysely<any>, all = false): Promise<MigrationResultSet> {
  const migrator = createMigrator(db);
  return raise(all ? await migrator.migrateTo(NO_MIGRATIONS) : await migrator.migrateDown());
}
