import { sql } from 'kysely';
import { Client } from 'pg';
import { createApp } from '../../src/bootstrap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createMigrator, migrateDown, migrateToLatest, NoDownStepError, SchemaBehindError } from '../../src/dbs/postgres/postgres-migrator';
import { createKysely, createPool, endPool } from '../../src/dbs/postgres/postgres-pool';
import { eventually } from '../support/fake-clickhouse';
import { createTestDatabase, TestDatabase } from '../support/postgres';
import * as initial from '../../migrations/postgres/0001_initial';
import * as nodePageIndexes from '../../migrations/postgres/0002_node_page_indexes';
import * as traceRootsIndex from '../../migrations/postgres/0003_trace_roots_index';

/** Kysely's migration lock on Postgres: a session advisory lock on this id (its PostgresAdapter's LOCK_ID). */
const KYSELY_MIGRATION_LOCK = '3853314791062309107';

describe('Postgres migrations', () => {
  let test: TestDatabase;
  beforeAll(async () => (test = await createTestDatabase()));
  afterAll(async () => test.drop());

  /**
   * Waits until the starting app's session waits for Kysely's migration lock, and has for `forMs`: a fixed sleep
   * could end before the app asks for the lock, and the test would pass without the app ever waiting. Fails at
   * once with the app's error if it gives up (or starts) meanwhile.
   */
  const waitingOnMigrationLock = async (holder: Client, starting: Promise<{ close(): Promise<void> }>, forMs = 0) => {
    let waited = false;
    let stop = false;
    const gaveUp = starting.then(
      async (app) => {
        if (waited) return;
        await app.close();
        throw new Error('the app started while another session held the migration lock');
      },
      (error: unknown) => {
        if (!waited) throw error;
      },
    );
    gaveUp.catch(() => (stop = true));
    const waiting = eventually(
      `the app waiting ${forMs} ms for the migration lock`,
      async () => {
        if (stop) return true; // the race below has already failed
        // A bigint advisory key is kept as its high (classid) and low (objid) 32 bits, objsubid 1.
        const { rows } = await holder.query(
          `select 1 from pg_locks l join pg_stat_activity a on a.pid = l.pid
           where l.locktype = 'advisory' and not l.granted and l.objsubid = 1 and l.pid <> pg_backend_pid()
             and ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint
             and a.wait_event_type = 'Lock' and a.wait_event = 'advisory' and now() - a.query_start >= $2::int * interval '1 ms'`,
          [KYSELY_MIGRATION_LOCK, forMs],
        );
        return rows.length > 0;
      },
      30_000,
      50,
    );
    try {
      await Promise.race([waiting, gaveUp]);
    } finally {
      waited = true;
    }
  };

  const indexesOf = async (table: string) =>
    (await sql<{ indexname: string }>`select indexname from pg_indexes where tablename = ${table} order by 1`.execute(test.db)).rows.map((r) => r.indexname);
  const nodeIndexes = () => indexesOf('nodes');
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
    expect(result.results?.map((r) => [r.migrationName, r.status])).toEqual([
      ['0001_initial', 'Success'], ['0002_node_page_indexes', 'Success'], ['0003_trace_roots_index', 'Success'],
    ]);
    expect(await tables()).toHaveLength(5);
    expect(await nodeIndexes()).toEqual(['nodes_created_key_idx', 'nodes_pk', 'nodes_project_page_idx', 'nodes_project_tree_page_idx']);
    expect(await indexesOf('spans')).toEqual(['spans_created_key_idx', 'spans_pk', 'spans_project_start_idx', 'spans_trace_roots_idx']);

    // Each step down undoes only its own indexes: 0003's goes, then 0002's, and the ones those replaced come back.
    await migrateDown(test.db);
    expect(await indexesOf('spans')).toEqual(['spans_created_key_idx', 'spans_pk', 'spans_project_start_idx']);
    expect(await nodeIndexes()).toEqual(['nodes_created_key_idx', 'nodes_pk', 'nodes_project_page_idx', 'nodes_project_tree_page_idx']);
    await migrateDown(test.db);
    expect(await nodeIndexes()).toEqual(['nodes_created_key_idx', 'nodes_pk', 'nodes_project_start_idx', 'nodes_project_tree_idx']);
    await migrateToLatest(test.db);
  });

  it('0002 gives up on its drops after 5 s behind a long read of nodes, and changes nothing (reads that came meanwhile go on then)', async () => {
    await migrateDown(test.db);
    await migrateDown(test.db);
    const reader = new Client({ connectionString: test.url });
    await reader.connect();
    let migrating: Promise<Error | null> = Promise.resolve(null);
    try {
      await reader.query('begin');
      await reader.query('select count(*) from nodes');
      const started = Date.now();
      // Settled at once, so no failure below leaves it rejected with no handler; asserted further down.
      migrating = migrateToLatest(test.db).then(() => null, (error: Error) => error);
      // A read that comes while 0002 waits for its lock queues behind it, and goes on once 0002 gives up,
      // though the long read still holds its lock. It comes once 0002's drop is seen waiting (its index
      // builds before take no lock a read waits for).
      const later = new Client({ connectionString: test.url });
      await later.connect();
      try {
        const waiting = async () =>
          (await later.query<{ n: number }>("select count(*)::int as n from pg_locks where relation = 'nodes'::regclass and not granted")).rows[0].n > 0;
        for (const until = Date.now() + 4_000; !(await waiting()) && Date.now() < until; ) await new Promise((done) => setTimeout(done, 50));
        if (!(await waiting())) throw new Error("0002's drop was not seen waiting for its lock within 4 s");
        // Settled either way, so a failure above leaves no rejection unhandled.
        const laterRead = later.query('select count(*) from nodes').then(() => Date.now(), (error: Error) => error);
        const outcome = await migrating;
        expect(outcome).toBeInstanceOf(Error);
        expect(outcome!.message).toMatch(/^Postgres migration 0002_node_page_indexes failed: canceling statement due to lock timeout/);
        const gaveUpAt = Date.now();
        expect(gaveUpAt - started).toBeGreaterThanOrEqual(5_000);
        expect(gaveUpAt - started).toBeLessThan(10_000);
        const readAt = await laterRead;
        if (readAt instanceof Error) throw readAt;
        // It waited behind 0002, and went on once 0002 gave up.
        expect(readAt - started).toBeGreaterThanOrEqual(4_500);
        expect(readAt - gaveUpAt).toBeLessThan(2_000);
      } finally {
        await later.end();
      }
      expect(await nodeIndexes()).toEqual(['nodes_created_key_idx', 'nodes_pk', 'nodes_project_start_idx', 'nodes_project_tree_idx']);
    } finally {
      await reader.end();
      // On an early failure 0002 goes on once the reader lets go: settled here, before the next test migrates.
      await migrating;
    }
    await migrateToLatest(test.db);
    expect(await nodeIndexes()).toEqual(['nodes_created_key_idx', 'nodes_pk', 'nodes_project_page_idx', 'nodes_project_tree_page_idx']);
  }, 30_000);

  it('reads timestamptz back as ISO-8601 with microseconds', async () => {
    const { rows } = await sql<{ t: string }>`select '2026-01-02 03:04:05.000007+00'::timestamptz as t`.execute(test.db);
    expect(rows[0].t).toBe('2026-01-02T03:04:05.000007Z');
  });

  it("migrates at startup on its own connection, waiting out another migrator's lock past the API's statement timeout", async () => {
    await migrateDown(test.db, true);
    // What a second replica meets while the first migrates: Kysely's migration lock, held.
    const otherMigrator = new Client({ connectionString: test.url });
    await otherMigrator.connect();
    await otherMigrator.query('select pg_advisory_lock($1)', [KYSELY_MIGRATION_LOCK]);
    // A statement timeout in DATABASE_URL (or the role's) would cancel the wait as well: the migration's connection has none.
    // A lock_timeout there does not: Kysely's statement that waits for the lock (a session advisory lock, taken
    // before the migrations' transaction) sets its own, an hour, for itself alone. The migrations then run under
    // the URL's lock_timeout, as 0002 also does after its own 5 s step.
    const url = new URL(test.url);
    url.searchParams.set('options', '-c statement_timeout=300 -c lock_timeout=300');
    const starting = createApp({ DATABASE_URL: url.toString(), MIGRATE_ON_START: 'true', DB_STATEMENT_TIMEOUT_MS: '300', USE_CLICKHOUSE: 'false', LOG_LEVEL: 'silent' });
    try {
      // Released only once the app has waited on the lock past its statement timeouts (300 ms), still waiting.
      await waitingOnMigrationLock(otherMigrator, starting, 1_000);
      await otherMigrator.query('select pg_advisory_unlock($1)', [KYSELY_MIGRATION_LOCK]);
      const app = await starting;
      await app.close();
    } finally {
      await otherMigrator.end();
    }
    expect(await tables()).toHaveLength(5);
  });

  const startApp = (env: Record<string, string>) => createApp({ DATABASE_URL: test.url, USE_CLICKHOUSE: 'false', LOG_LEVEL: 'silent', ...env });

  it('refuses to start on a schema behind the build when it may not migrate, naming what is pending, and changes nothing', async () => {
    await migrateDown(test.db, true);
    const refused = startApp({ MIGRATE_ON_START: 'false' });
    await expect(refused).rejects.toThrow(SchemaBehindError);
    await expect(refused).rejects.toThrow('pending migrations 0001_initial, 0002_node_page_indexes, 0003_trace_roots_index. Run `npm run migrate`');
    expect(await tables()).toEqual([]);
    await migrateToLatest(test.db);
  });

  it('starts on a schema a newer build migrated (a rolled-back deploy), whether it may migrate or not', async () => {
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_build', ${new Date().toISOString()})`.execute(test.db);
    try {
      for (const migrateOnStart of ['true', 'false']) {
        const app = await startApp({ MIGRATE_ON_START: migrateOnStart });
        await app.close();
      }
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
  });

  it('starts when a newer build migrates between its look at the schema and its turn at the migration lock', async () => {
    await migrateDown(test.db, true);
    // The newer build holds the lock while this one starts: this one has seen 0001_initial pending and waits.
    const newerBuild = new Client({ connectionString: test.url });
    await newerBuild.connect();
    await newerBuild.query('select pg_advisory_lock($1)', [KYSELY_MIGRATION_LOCK]);
    const starting = startApp({ MIGRATE_ON_START: 'true' });
    starting.catch(() => undefined);
    try {
      await waitingOnMigrationLock(newerBuild, starting);
      // ...then migrates: this build's migrations, and one of its own.
      await initial.up(test.db);
      await nodePageIndexes.up(test.db);
      await traceRootsIndex.up(test.db);
      const now = new Date().toISOString();
      await sql`insert into kysely_migration (name, timestamp)
                values ('0001_initial', ${now}), ('0002_node_page_indexes', ${now}), ('0003_trace_roots_index', ${now}),
                       ('9999_from_a_newer_build', ${now})`.execute(test.db);
      await newerBuild.query('select pg_advisory_unlock($1)', [KYSELY_MIGRATION_LOCK]);
      const app = await starting;
      await app.close();
    } finally {
      await newerBuild.end();
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
    expect(await tables()).toHaveLength(5);
  });

  it('a run Kysely refuses before any migration starts says why, with no empty migration name', async () => {
    await sql`insert into kysely_migration (name, timestamp) values ('9999_from_a_newer_build', ${new Date().toISOString()})`.execute(test.db);
    try {
      await expect(migrateToLatest(test.db)).rejects.toThrow(
        /^Postgres migrations could not run: corrupted migrations: previously executed migration 9999_from_a_newer_build is missing$/,
      );
    } finally {
      await sql`delete from kysely_migration where name = '9999_from_a_newer_build'`.execute(test.db);
    }
  });

  // CREATE SCHEMA AUTHORIZATION <user>, the usual step since Postgres 15 took CREATE on public from ordinary users:
  // "$user" comes first in the default search_path, every migration read as pending, and the API migrated
  // into new, empty tables there (every key refused, the data seemingly gone).
  it('refuses a schema made since that comes first in search_path while public holds its tables, and makes nothing there', async () => {
    const { rows } = await sql<{ user: string }>`select current_user as user`.execute(test.db);
    const user = rows[0].user;
    await sql`create schema ${sql.id(user)}`.execute(test.db);
    try {
      for (const migrate of ['true', 'false']) {
        await expect(startApp({ MIGRATE_ON_START: migrate })).rejects.toThrow(
          `this connection's current schema "${user}" holds none of this API's tables, while schema "public", after it in search_path, holds them, migrated`,
        );
      }
      const made = await sql<{ n: number }>`select count(*)::int as n from pg_tables where schemaname = ${user}`.execute(test.db);
      expect(made.rows[0].n).toBe(0);
      // search_path set to that schema alone: a deployment of its own there (a staging beside production), not refused.
      const own = new URL(test.url);
      own.searchParams.set('options', `-c search_path=${user}`);
      const app = await createApp({ DATABASE_URL: own.toString(), USE_CLICKHOUSE: 'false', LOG_LEVEL: 'silent', MIGRATE_ON_START: 'true' });
      await app.close();
      const ownTables = await sql<{ n: number }>`select count(*)::int as n from pg_tables where schemaname = ${user} and tablename = 'spans'`.execute(test.db);
      expect(ownTables.rows[0].n).toBe(1);
      // A search_path naming no schema that exists (a typo): said so, not "schema is behind" or Postgres's "no schema has been selected".
      const none = new URL(test.url);
      none.searchParams.set('options', '-c search_path=publc');
      await expect(createApp({ DATABASE_URL: none.toString(), USE_CLICKHOUSE: 'false', LOG_LEVEL: 'silent', MIGRATE_ON_START: 'false' })).rejects.toThrow(
        'search_path (publc) names no schema that exists in this database and this role may use (USAGE)',
      );
    } finally {
      await sql`drop schema ${sql.id(user)} cascade`.execute(test.db);
    }
    expect(await tables()).toEqual(['api_keys', 'backfill_checkpoints', 'mirror_gaps', 'nodes', 'spans']);
  });

  // Kysely skips a migration without a down step and undoes the ones beneath it: the history then said the
  // top one was applied over a schema without what it was built on.
  it('migrate down refuses, undoing nothing, when a migration it would undo has no down step', async () => {
    const folder = mkdtempSync(path.join(tmpdir(), 'migrations-'));
    const migration = (table: string, down: boolean) =>
      `exports.up = async (db) => { await db.schema.createTable('${table}').addColumn('id', 'integer').execute(); };\n` +
      (down ? `exports.down = async (db) => { await db.schema.dropTable('${table}').execute(); };\n` : '');
    writeFileSync(path.join(folder, '0001_first.js'), migration('first', true));
    writeFileSync(path.join(folder, '0002_second.js'), migration('second', false));
    await sql`create schema down_check`.execute(test.db);
    const url = new URL(test.url);
    url.searchParams.set('options', '-c search_path=down_check');
    const pool = createPool(url.toString(), 1);
    const db = createKysely(pool);
    const own = async () =>
      (await sql<{ t: string }>`select tablename as t from pg_tables where schemaname = 'down_check' order by 1`.execute(test.db)).rows.map((r) => r.t);
    try {
      await (await createMigrator(db, folder)).migrateToLatest();
      expect(await own()).toEqual(['first', 'kysely_migration', 'kysely_migration_lock', 'second']);
      for (const all of [true, false]) {
        await expect(migrateDown(db, all, folder)).rejects.toThrow(new NoDownStepError(['0002_second']));
        expect(await own()).toEqual(['first', 'kysely_migration', 'kysely_migration_lock', 'second']);
      }
      const applied = await sql<{ name: string }>`select name from down_check.kysely_migration order by 1`.execute(test.db);
      expect(applied.rows.map((r) => r.name)).toEqual(['0001_first', '0002_second']);
    } finally {
      await endPool(pool);
      await sql`drop schema down_check cascade`.execute(test.db);
      rmSync(folder, { recursive: true, force: true });
    }
  });

  // One transaction for all would hold the locks of each until the last commits (0002's exclusive lock on nodes
  // while 0003 builds an index on spans).
  it('applies and undoes migrations each in a transaction of its own: one that fails leaves those before it done, and says which', async () => {
    const folder = mkdtempSync(path.join(tmpdir(), 'migrations-'));
    const log = (step: string) =>
      `await db.executeQuery({ sql: "insert into steps_check.log values ('${step}', txid_current())", parameters: [], query: { kind: 'RawNode' } });`;
    const migration = (name: string) => `exports.up = async (db) => { ${log(`up ${name}`)} };\nexports.down = async (db) => { ${log(`down ${name}`)} };\n`;
    writeFileSync(path.join(folder, '0001_first.js'), migration('first'));
    writeFileSync(path.join(folder, '0002_second.js'), migration('second'));
    writeFileSync(path.join(folder, '0003_failing.js'), "exports.up = async () => { throw new Error('no such thing'); };\n");
    await sql`create schema steps_check`.execute(test.db);
    await sql`create table steps_check.log (step text, tx bigint)`.execute(test.db);
    const url = new URL(test.url);
    url.searchParams.set('options', '-c search_path=steps_check');
    const pool = createPool(url.toString(), 1);
    const db = createKysely(pool);
    const steps = async () => (await sql<{ step: string; tx: string }>`select step, tx from steps_check.log order by tx`.execute(test.db)).rows;
    try {
      await expect(migrateToLatest(db, folder)).rejects.toThrow(
        'Postgres migration 0003_failing failed: no such thing (applied before it: 0001_first, 0002_second)',
      );
      const applied = await sql<{ name: string }>`select name from steps_check.kysely_migration order by 1`.execute(test.db);
      expect(applied.rows.map((r) => r.name)).toEqual(['0001_first', '0002_second']);

      rmSync(path.join(folder, '0003_failing.js'));
      await migrateDown(db, true, folder);
      const all = await steps();
      expect(all.map((r) => r.step)).toEqual(['up first', 'up second', 'down second', 'down first']);
      expect(new Set(all.map((r) => r.tx)).size).toBe(4);
    } finally {
      await endPool(pool);
      await sql`drop schema steps_check cascade`.execute(test.db);
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it("keeps to its own schema's migration table when another schema of the database has one", async () => {
    // Another app migrated with Kysely in schema `other`; ours has not run yet (no table in public).
    await migrateDown(test.db, true);
    await sql`drop table kysely_migration, kysely_migration_lock`.execute(test.db);
    await sql`create schema other`.execute(test.db);
    await sql`create table other.kysely_migration (name varchar(255) primary key, timestamp varchar(255) not null)`.execute(test.db);
    await sql`insert into other.kysely_migration values ('0001_theirs', '2026-01-01T00:00:00.000Z')`.execute(test.db);
    try {
      await expect(startApp({ MIGRATE_ON_START: 'false' })).rejects.toThrow('pending migrations 0001_initial');
      const app = await startApp({ MIGRATE_ON_START: 'true' });
      await app.close();
      expect(await tables()).toHaveLength(5);
      const theirs = await sql<{ name: string }>`select name from other.kysely_migration`.execute(test.db);
      expect(theirs.rows).toEqual([{ name: '0001_theirs' }]);
    } finally {
      await sql`drop schema other cascade`.execute(test.db);
    }
  });
});
