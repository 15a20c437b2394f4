import { sql } from 'kysely';
import { migrateDown, migrateToLatest } from '../../src/dbs/postgres/postgres-migrator';
import { createTestDatabase, TestDatabase } from '../support/postgres';

describe('Postgres migrations', () => {
  let test: TestDatabase;
  beforeAll(async () => (test = await createTestDatabase()));
  afterAll(async () => test.drop());

  const tables = async () =>
    (
      await sql<{ tablename: string }>`select tablename from pg_tables where schemaname = 'public' and tablename not like 'kysely_%' order by 1`.execute(test.db)
    ).rows.map((r) => r.tablename);

  it('the template is migrated to latest', async () => {
    expect(await tables()).toEqual(['api_keys', 'backfill_checkpoints', 'mirror_gaps', 'nodes', 'spans']);
  });

  it('migrates all the way down and back up again', async () => {
    await migrateDown(test.db, true);
    expect(await tables()).toEqual([]);
    const result = await migrateToLatest(test.db);
    expect(result.results?.map((r) => r.status)).toEqual(['Success']);
    expect(await tables()).toHaveLength(5);
  });

  it('reads timestamptz back as ISO-8601 with microseconds', async () => {
    const { rows } = await sql<{ t: string }>`select '2026-01-02 03:04:05.000007+00'::timestamptz as t`.execute(test.db);
    expect(rows[0].t).toBe('2026-01-02T03:04:05.000007Z');
  });
});
