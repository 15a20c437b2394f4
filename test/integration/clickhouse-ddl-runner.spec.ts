import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClickHouseClient, createClient } from '@clickhouse/client';
import { AppConfig } from '../../src/config/app-config';
import { clickHouseClientOptions } from '../../src/dbs/clickhouse/clickhouse-clients';
import {
  CLICKHOUSE_MIGRATIONS_DIR,
  columnsAddedBy,
  migrateClickHouse,
  readClickHouseMigrations,
  splitStatements,
  tablesCreatedBy,
} from '../../src/dbs/clickhouse/clickhouse-ddl-runner';
import { SPAN_COLUMNS } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { dropClickHouseDatabase, testClickHouseConfig } from '../support/clickhouse';
import { FakeClickHouse } from '../support/fake-clickhouse';

describe('ClickHouse DDL runner', () => {
  const databases: Array<{ config: AppConfig['clickhouse']; url: string }> = [];
  const clients: ClickHouseClient[] = [];

  /** A database name nobody has used, and a client that reads system tables. */
  function freshDatabase(overrides: Partial<AppConfig['clickhouse']> = {}) {
    const target = testClickHouseConfig(`test_ddl_${randomBytes(5).toString('hex')}`, overrides);
    databases.push(target);
    const client = createClient(clickHouseClientOptions(target.config, target.url, 'default'));
    clients.push(client);
    return { ...target, client };
  }

  async function rows<T>(client: ClickHouseClient, query: string, params: Record<string, unknown> = {}): Promise<T[]> {
    const result = await client.query({ query, query_params: params, format: 'JSONEachRow' });
    return result.json<T>();
  }

  const tableOf = (client: ClickHouseClient, database: string, name: string) =>
    rows<{ engine: string; engine_full: string; sorting_key: string; primary_key: string; partition_key: string }>(
      client,
      'SELECT engine, engine_full, sorting_key, primary_key, partition_key FROM system.tables WHERE database = {database:String} AND name = {name:String}',
      { database, name },
    ).then((r) => r[0]);

  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.close()));
    await Promise.allSettled(databases.map((d) => dropClickHouseDatabase(d.config, d.url)));
  });

  it('reads which mirror table a CREATE TABLE makes, past leading comments, with names bare, quoted or qualified', () => {
    const created = (...statements: string[]) => tablesCreatedBy({ name: '0009_x', statements });
    for (const [file, table] of [['0001_spans.sql', 'spans'], ['0002_nodes.sql', 'nodes']]) {
      expect(created(...splitStatements(readFileSync(join(CLICKHOUSE_MIGRATIONS_DIR, file), 'utf8')))).toEqual([table]);
    }
    expect(created("-- applies to migrations/*.sql\nCREATE TABLE IF NOT EXISTS spans (a String COMMENT 'x */ y') ENGINE = Memory")).toEqual(['spans']);
    expect(created('/* a /* nested */ comment */ CREATE OR REPLACE TABLE `db`.`nodes` (a UInt8) ENGINE = Memory')).toEqual(['nodes']);
    expect(created('CREATE TABLE`spans`(a UInt8) ENGINE = Memory', 'CREATE TABLE "my-db" . spans (a UInt8) ENGINE = Memory')).toEqual(['spans', 'spans']);
    // Not a mirror table, though its name starts like one; and not a CREATE TABLE at all.
    expect(created('CREATE TABLE `spans-old` (a UInt8) ENGINE = Memory', 'CREATE TABLE spans_old (a UInt8) ENGINE = Memory', 'ALTER TABLE spans ADD COLUMN b UInt8', "SELECT 'CREATE TABLE spans'")).toEqual([]);
    expect(() => created('CREATE TABLE (a UInt8) ENGINE = Memory')).toThrow('ClickHouse migration 0009_x: cannot read the name of the table a CREATE TABLE makes');
  });

  it('splits statements at semicolons outside strings, quoted names and comments', () => {
    const sql = [
      "-- a comment; not a statement",
      "CREATE TABLE a (s String DEFAULT 'x;y', `we;ird` UInt8) ENGINE = Memory;",
      "/* block; comment */",
      "SELECT 'it''s; fine', \"col;name\", 'back\\\\slash\\'; still' ; ",
      "-- trailing comment only",
    ].join('\n');
    expect(splitStatements(sql)).toEqual([
      "-- a comment; not a statement\nCREATE TABLE a (s String DEFAULT 'x;y', `we;ird` UInt8) ENGINE = Memory",
      "/* block; comment */\nSELECT 'it''s; fine', \"col;name\", 'back\\\\slash\\'; still'",
    ]);
  });

  it('applies every migration to a fresh database, then does nothing on a second run', async () => {
    const { config, url, client } = freshDatabase();
    const files = await readClickHouseMigrations();
    expect(files.map((m) => m.name)).toEqual(['0001_spans', '0002_nodes']);

    const first = await migrateClickHouse(config, url);
    expect(first).toEqual({ applied: ['0001_spans', '0002_nodes'], ttl: [], unknown: [], ttlDiffers: [] });

    const recorded = await rows<{ version: number; name: string; checksum: string }>(
      client,
      `SELECT version, name, checksum FROM \`${config.database}\`.schema_migrations FINAL ORDER BY version`,
    );
    expect(recorded).toEqual(files.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })));

    const second = await migrateClickHouse(config, url);
    expect(second).toEqual({ applied: [], ttl: [], unknown: [], ttlDiffers: [] });
    const count = await rows<{ n: string }>(client, `SELECT count() AS n FROM \`${config.database}\`.schema_migrations`);
    expect(Number(count[0].n)).toBe(2);
  });

  it('creates the tables with the intended engine, sort key, primary key and partition key', async () => {
    const { config, url, client } = freshDatabase();
    await migrateClickHouse(config, url);

    const spans = await tableOf(client, config.database, 'spans');
    expect(spans.engine).toBe('ReplacingMergeTree');
    expect(spans.engine_full).toMatch(/^ReplacingMergeTree\(version, is_deleted\)/);
    expect(spans.sorting_key).toBe('project_id, toDate(created_at), trace_id, span_id');
    expect(spans.primary_key).toBe('project_id, toDate(created_at), trace_id, span_id');
    expect(spans.partition_key).toBe('toYYYYMM(created_at)');
    expect(spans.engine_full).toContain('non_replicated_deduplication_window = 1000');
    expect(spans.engine_full).not.toMatch(/\sTTL\s/);

    const nodes = await tableOf(client, config.database, 'nodes');
    expect(nodes.engine).toBe('ReplacingMergeTree');
    expect(nodes.engine_full).toMatch(/^ReplacingMergeTree\(version, is_deleted\)/);
    expect(nodes.sorting_key).toBe('project_id, toDate(created_at), node_id');
    expect(nodes.primary_key).toBe('project_id, toDate(created_at), node_id');
    expect(nodes.partition_key).toBe('toYYYYMM(created_at)');
    expect(nodes.engine_full).toContain('non_replicated_deduplication_window = 1000');

    const columns = await rows<{ table: string; name: string; type: string; compression_codec: string }>(
      client,
      `SELECT table, name, type, compression_codec FROM system.columns
       WHERE database = {database:String} AND table IN ('spans', 'nodes') ORDER BY table, position`,
      { database: config.database },
    );
    const type = (table: string, name: string) => columns.find((c) => c.table === table && c.name === name)?.type;
    expect(type('spans', 'trace_id')).toBe('UUID');
    expect(type('spans', 'span_id')).toBe('UInt64');
    expect(type('spans', 'parent_id')).toBe('Nullable(UInt64)');
    expect(type('spans', 'start_time')).toBe("DateTime64(6, 'UTC')");
    expect(type('spans', 'span_name')).toBe('LowCardinality(String)');
    expect(type('spans', 'attributes')).toBe('String');
    expect(type('spans', 'version')).toBe('UInt64');
    expect(type('spans', 'is_deleted')).toBe('UInt8');
    expect(type('nodes', 'node_id')).toBe('UUID');
    expect(type('nodes', 'root_id')).toBe('Nullable(UUID)');
    expect(columns.find((c) => c.table === 'spans' && c.name === 'attributes')?.compression_codec).toBe('CODEC(ZSTD(3))');

    const indexes = await rows<{ table: string; name: string; type: string }>(
      client,
      'SELECT table, name, type FROM system.data_skipping_indices WHERE database = {database:String} ORDER BY table, name',
      { database: config.database },
    );
    expect(indexes).toEqual([
      { table: 'nodes', name: 'time_start_minmax', type: 'minmax' },
      { table: 'nodes', name: 'tree_id_bf', type: 'bloom_filter' },
      { table: 'spans', name: 'start_time_minmax', type: 'minmax' },
      { table: 'spans', name: 'trace_id_bf', type: 'bloom_filter' },
    ]);
  });

  it('sets the TTL from config, changes it, and removes it again at 0', async () => {
    const { config, url, client } = freshDatabase({ ttlDays: 30 });
    const first = await migrateClickHouse(config, url);
    // Set as each migration creates its table, before the migration is recorded.
    expect(first.ttl).toEqual([
      { table: 'spans', days: 30 },
      { table: 'nodes', days: 30 },
    ]);
    for (const table of ['spans', 'nodes']) {
      expect((await tableOf(client, config.database, table)).engine_full).toContain('TTL toDateTime(created_at) + toIntervalDay(30)');
    }

    expect((await migrateClickHouse(config, url)).ttl).toEqual([]);

    const longer = await migrateClickHouse({ ...config, ttlDays: 90 }, url);
    expect(longer.ttl.map((t) => t.days)).toEqual([90, 90]);
    expect((await tableOf(client, config.database, 'spans')).engine_full).toContain('TTL toDateTime(created_at) + toIntervalDay(90)');

    const none = await migrateClickHouse({ ...config, ttlDays: 0 }, url);
    expect(none.ttl.map((t) => t.days)).toEqual([0, 0]);
    for (const table of ['spans', 'nodes']) {
      expect((await tableOf(client, config.database, table)).engine_full).not.toMatch(/\sTTL\s/);
    }
  });

  it("at the API's start ('new-tables') sets the TTL only on tables it creates, and reports the others' instead of changing them", async () => {
    const { config, url, client } = freshDatabase({ ttlDays: 30 });
    const created = await migrateClickHouse(config, url, { ttl: 'new-tables' });
    expect(created.ttl.map((t) => t.days)).toEqual([30, 30]);

    // A replica, or a restart, whose environment says otherwise: the tables keep what they have.
    const other = await migrateClickHouse({ ...config, ttlDays: 0 }, url, { ttl: 'new-tables' });
    expect(other).toMatchObject({ ttl: [], ttlDiffers: [{ table: 'nodes', days: 30 }, { table: 'spans', days: 30 }] });
    for (const table of ['spans', 'nodes']) {
      expect((await tableOf(client, config.database, table)).engine_full).toContain('TTL toDateTime(created_at) + toIntervalDay(30)');
    }
    // migrate:clickhouse is the one that changes it.
    expect((await migrateClickHouse({ ...config, ttlDays: 0 }, url)).ttl.map((t) => t.days)).toEqual([0, 0]);
  });

  const commandOn = (client: ClickHouseClient) => (query: string) => client.command({ query, clickhouse_settings: { wait_end_of_query: 1 } });
  const tablesIn = (client: ClickHouseClient, database: string) =>
    rows<{ name: string }>(client, 'SELECT name FROM system.tables WHERE database = {database:String} ORDER BY name', { database }).then((r) => r.map((t) => t.name));

  const refusal = (database: string, state: string, problems: string[]) =>
    `ClickHouse database ${database} has tables the mirror cannot write (${state}): ${problems.join('; ')}. ` +
    'Rename or drop them, or set CLICKHOUSE_DATABASE to a database of their own for the mirror ' +
    '(or, after a change to the mirror, add the migration its columns need)';

  it('refuses mirror tables it did not make, before applying or recording any migration, naming what is wrong with them', async () => {
    const { config, url, client } = freshDatabase();
    const command = commandOn(client);
    await command(`CREATE DATABASE ${config.database}`);
    // Another application's table of the same name: CREATE TABLE IF NOT EXISTS would pass over it.
    await command(`CREATE TABLE ${config.database}.spans (project_id UUID, trace_id UUID, note String) ENGINE = MergeTree ORDER BY project_id`);
    // Every column of the mirror's but the two it has, those 0002_nodes names for its own table among them.
    const missing = SPAN_COLUMNS.filter((c) => c !== 'project_id' && c !== 'trace_id').join(', ');
    await expect(migrateClickHouse(config, url)).rejects.toThrow(
      refusal(config.database, 'no migration was applied', [
        'spans is a MergeTree, not a ReplacingMergeTree',
        'spans is sorted by (project_id), not (project_id, toDate(created_at), trace_id, span_id)',
        'spans is partitioned by nothing, not (toYYYYMM(created_at))',
        `spans has no columns ${missing}`,
      ]),
    );
    // Nothing written: not even the migrations ledger.
    expect(await tablesIn(client, config.database)).toEqual(['spans']);

    // The mirror's columns, but versioned without tombstones, sorted so that different spans replace each other, and
    // partitioned by a time that changes, so that a row's versions land where merges do not replace them.
    const model = freshDatabase();
    await migrateClickHouse(model.config, model.url);
    await command(`DROP TABLE ${config.database}.spans`);
    await command(`CREATE TABLE ${config.database}.spans AS ${model.config.database}.spans ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(updated_at) ORDER BY (project_id, span_id) PRIMARY KEY (project_id, span_id)`);
    await expect(migrateClickHouse(config, url)).rejects.toThrow(
      refusal(config.database, 'no migration was applied', [
        'spans is not versioned by (version, is_deleted): ReplacingMergeTree(version)',
        'spans is sorted by (project_id, span_id), not (project_id, toDate(created_at), trace_id, span_id)',
        'spans is partitioned by (toYYYYMM(updated_at)), not (toYYYYMM(created_at))',
      ]),
    );

    await command(`RENAME TABLE ${config.database}.spans TO ${config.database}.spans_theirs`);
    expect((await migrateClickHouse(config, url)).applied).toEqual(['0001_spans', '0002_nodes']);
  });

  it('refuses, on a later run, a mirror table altered by hand since its migration', async () => {
    const { config, url, client } = freshDatabase();
    const command = commandOn(client);
    await migrateClickHouse(config, url);
    await command(`ALTER TABLE ${config.database}.spans DROP COLUMN status_message`);
    await expect(migrateClickHouse(config, url)).rejects.toThrow(refusal(config.database, 'the migrations were applied', ['spans has no column status_message']));
    await command(`ALTER TABLE ${config.database}.spans ADD COLUMN status_message Nullable(String) AFTER status_code`);
    expect(await migrateClickHouse(config, url)).toEqual({ applied: [], ttl: [], unknown: [], ttlDiffers: [] });
  });

  it('reads which columns an ALTER TABLE adds to a mirror table', () => {
    expect(columnsAddedBy('-- why\nALTER TABLE spans ADD COLUMN IF NOT EXISTS note String, ADD COLUMN `other` UInt8 AFTER note')).toEqual(['spans.note', 'spans.other']);
    expect(columnsAddedBy('alter table `db`.nodes add column extra String, add column "quoted" UInt8')).toEqual(['nodes.extra', 'nodes.quoted']);
    // Not a mirror table, not an ALTER TABLE, or nothing added.
    expect(columnsAddedBy('ALTER TABLE spans_old ADD COLUMN note String')).toEqual([]);
    expect(columnsAddedBy("SELECT 'ALTER TABLE spans ADD COLUMN note String'")).toEqual([]);
    expect(columnsAddedBy('ALTER TABLE spans DROP COLUMN note')).toEqual([]);
  });

  describe('with a migrations folder of its own', () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'ch-migrations-'));
      for (const file of await readdir(CLICKHOUSE_MIGRATIONS_DIR)) await copyFile(join(CLICKHOUSE_MIGRATIONS_DIR, file), join(dir, file));
    });
    afterEach(async () => rm(dir, { recursive: true, force: true }));

    it('applies only a newly added migration', async () => {
      const { config, url, client } = freshDatabase();
      await migrateClickHouse(config, url, { dir });
      await writeFile(join(dir, '0003_span_names.sql'), "ALTER TABLE spans ADD COLUMN IF NOT EXISTS note String DEFAULT ';'; -- why: a test\n");
      const result = await migrateClickHouse(config, url, { dir });
      expect(result.applied).toEqual(['0003_span_names']);
      const note = await rows<{ name: string }>(
        client,
        "SELECT name FROM system.columns WHERE database = {database:String} AND table = 'spans' AND name = 'note'",
        { database: config.database },
      );
      expect(note).toHaveLength(1);
    });

    it("uses a database a newer build migrated as it is (a rolled-back deploy), naming the migrations it does not know", async () => {
      const { config, url } = freshDatabase();
      await writeFile(join(dir, '0003_span_names.sql'), "ALTER TABLE spans ADD COLUMN IF NOT EXISTS note String DEFAULT '';\n");
      await migrateClickHouse(config, url, { dir });
      await rm(join(dir, '0003_span_names.sql'));
      expect(await migrateClickHouse(config, url, { dir })).toEqual({ applied: [], ttl: [], unknown: ['0003_span_names'], ttlDiffers: [] });
    });

    it("refuses a database missing this build's migrations under a newer build's, and an applied file missing between others", async () => {
      const { config, url } = freshDatabase();
      await migrateClickHouse(config, url, { dir });
      await writeFile(join(dir, '0004_later.sql'), "ALTER TABLE spans ADD COLUMN IF NOT EXISTS later String DEFAULT '';\n");
      await migrateClickHouse(config, url, { dir });
      await rm(join(dir, '0004_later.sql'));
      await writeFile(join(dir, '0003_between.sql'), 'SELECT 1;\n');
      await expect(migrateClickHouse(config, url, { dir })).rejects.toThrow(/has a newer build's migrations \(0004_later\) but not this build's 0003_between: migrate it with the newer build/);

      await rm(join(dir, '0003_between.sql'));
      await writeFile(join(dir, '0005_last.sql'), 'SELECT 1;\n');
      await expect(migrateClickHouse(config, url, { dir })).rejects.toThrow(/has migration 0004_later applied, which is not in the migrations folder though a later one is/);
    });

    it("at the API's start, sets the TTL on the tables a run that failed part-way created, when it is run again", async () => {
      const { config, url, client } = freshDatabase({ ttlDays: 30 });
      const nodes = await readFile(join(dir, '0002_nodes.sql'), 'utf8');
      // The run creates nodes, then fails before recording 0002 (a timeout, a server that went away).
      await writeFile(join(dir, '0002_nodes.sql'), `${nodes}\nSELECT throwIf(1, 'the run fails here');\n`);
      await expect(migrateClickHouse(config, url, { dir, ttl: 'new-tables' })).rejects.toThrow(/ClickHouse migration 0002_nodes failed: .*the run fails here/);
      await writeFile(join(dir, '0002_nodes.sql'), nodes);
      // Both tables exist before this run; 0002 is still to record, so nodes is the run's, and spans had its TTL already.
      const again = await migrateClickHouse(config, url, { dir, ttl: 'new-tables' });
      expect(again).toMatchObject({ applied: ['0002_nodes'], ttl: [{ table: 'nodes', days: 30 }], ttlDiffers: [] });
      for (const table of ['spans', 'nodes']) {
        expect((await tableOf(client, config.database, table)).engine_full).toContain('TTL toDateTime(created_at) + toIntervalDay(30)');
      }
    });

    it("at the API's start, leaves alone a table a pending migration creates that has a TTL already (made otherwise: restored, or by hand)", async () => {
      const { config, url, client } = freshDatabase({ ttlDays: 30 });
      const spans = await readFile(join(dir, '0001_spans.sql'), 'utf8');
      const command = commandOn(client);
      await command(`CREATE DATABASE IF NOT EXISTS ${config.database}`);
      await command(spans.replace('CREATE TABLE IF NOT EXISTS spans', `CREATE TABLE IF NOT EXISTS ${config.database}.spans`).replace(/;\s*$/, ''));
      await command(`ALTER TABLE ${config.database}.spans MODIFY TTL toDateTime(created_at) + INTERVAL 7 DAY`);
      const result = await migrateClickHouse(config, url, { dir, ttl: 'new-tables' });
      expect(result).toMatchObject({ applied: ['0001_spans', '0002_nodes'], ttl: [{ table: 'nodes', days: 30 }], ttlDiffers: [{ table: 'spans', days: 7 }] });
    });

    it('leaves to the check after the run a column that a pending migration adds to a table there already', async () => {
      const { config, url, client } = freshDatabase();
      const command = commandOn(client);
      // spans as a run of 0001 that failed before recording it left it, but without `hashes` (which no other table
      // has), added by a pending 0003, as a later build's migration adds a column its mapper writes.
      const spans = await readFile(join(dir, '0001_spans.sql'), 'utf8');
      const withoutHashes = spans.replace(/^\s*hashes\s.*\n/m, '');
      expect(withoutHashes).not.toBe(spans);
      await command(`CREATE DATABASE ${config.database}`);
      await command(withoutHashes.replace('CREATE TABLE IF NOT EXISTS spans', `CREATE TABLE ${config.database}.spans`).replace(/;\s*$/, ''));
      await writeFile(join(dir, '0003_hashes.sql'), 'ALTER TABLE spans ADD COLUMN IF NOT EXISTS hashes Nullable(String) CODEC(ZSTD(3)) AFTER links;\n');
      expect((await migrateClickHouse(config, url, { dir })).applied).toEqual(['0001_spans', '0002_nodes', '0003_hashes']);
    });

    it('refuses to run when an applied file was edited', async () => {
      const { config, url } = freshDatabase();
      await migrateClickHouse(config, url, { dir });
      await writeFile(join(dir, '0002_nodes.sql'), '-- edited\nCREATE TABLE IF NOT EXISTS nodes (x UInt8) ENGINE = Memory;\n');
      await expect(migrateClickHouse(config, url, { dir })).rejects.toThrow(/0002_nodes\.sql was changed after it was applied/);
    });

    it('names a file that does not follow NNNN_name.sql', async () => {
      const { config, url } = freshDatabase();
      await writeFile(join(dir, 'extra.sql'), 'SELECT 1;');
      await expect(migrateClickHouse(config, url, { dir })).rejects.toThrow(/extra\.sql: ClickHouse migrations are named NNNN_name\.sql/);
    });
  });

  it('says clearly when the server does not answer', async () => {
    const { config } = freshDatabase();
    await expect(migrateClickHouse({ ...config, requestTimeoutMs: 1000 }, 'http://127.0.0.1:9')).rejects.toThrow(
      /ClickHouse at http:\/\/127\.0\.0\.1:9 does not answer/,
    );
  });

  it('names an empty error answer to its ping (a proxy whose ClickHouse is gone), not an empty reason', async () => {
    const { config } = freshDatabase();
    const proxy = await FakeClickHouse.start(null, 'gateway', { pings: true });
    try {
      await expect(migrateClickHouse(config, proxy.url)).rejects.toThrow(
        `ClickHouse at ${proxy.url} does not answer: an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)`,
      );
    } finally {
      await proxy.close();
    }
  });
});
