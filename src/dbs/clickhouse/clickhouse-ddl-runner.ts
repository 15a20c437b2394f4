import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { ClickHouseClient, ClickHouseClientConfigOptions, ClickHouseLogLevel, createClient } from '@clickhouse/client';
import { AppConfig } from '../../config/app-config';
import { clickHouseClientOptions } from './clickhouse-clients';
import { describeSendError } from './retry-policy';
import { redactUrl } from '../../config/redact-url';
import { NODE_COLUMNS } from './node-clickhouse-row.mapper';
import { SPAN_COLUMNS } from './span-clickhouse-row.mapper';

/**
 * Applies migrations/clickhouse/NNNN_name.sql in order and records each in
 * `<database>.schema_migrations` (name, checksum, applied_at), then sets the
 * mirror tables' TTL from CLICKHOUSE_TTL_DAYS. The database comes from config:
 * the runner creates it and runs every file with it as the default database,
 * so the files never name it. ClickHouse has no transactional DDL, so the
 * files use IF NOT EXISTS and a file that failed half-way can be run again.
 */

export const CLICKHOUSE_MIGRATIONS_DIR = path.resolve(__dirname, '../../../migrations/clickhouse');

/** The tables whose rows expire after CLICKHOUSE_TTL_DAYS. */
export const MIRROR_TABLES = ['spans', 'nodes'] as const;
type MirrorTable = (typeof MIRROR_TABLES)[number];

/**
 * What the mirror relies on in each of its tables: the columns it writes (its row mappers' own lists); the sort
 * key, the row's identity that a newer version replaces; and the partition key, on a column that never changes,
 * so that every version of a row lands where merges replace it (as the migrations' ORDER BY and PARTITION BY
 * read back from system.tables).
 */
const MIRROR_TABLE_SHAPES: Record<MirrorTable, { columns: readonly string[]; sortingKey: string; partitionKey: string }> = {
  spans: { columns: SPAN_COLUMNS, sortingKey: 'project_id, toDate(created_at), trace_id, span_id', partitionKey: 'toYYYYMM(created_at)' },
  nodes: { columns: NODE_COLUMNS, sortingKey: 'project_id, toDate(created_at), node_id', partitionKey: 'toYYYYMM(created_at)' },
};

const FILE_NAME = /^(\d{4})_([a-z0-9_]+)\.sql$/;

/** DDL and TTL changes can rewrite parts; they get longer than the request timeout for ordinary queries. */
const DDL_TIMEOUT_MS = 300_000;

export interface ClickHouseMigration {
  version: number;
  /** The file name without .sql, e.g. 0001_spans. */
  name: string;
  checksum: string;
  statements: string[];
}

export interface ClickHouseMigrationResult {
  /** Names of the migrations this run applied, in order; empty when already up to date. */
  applied: string[];
  /** TTL changes this run made: days per table, 0 for removed. */
  ttl: Array<{ table: string; days: number }>;
  /** Applied migrations this build does not have, all later than its own: a newer build's (a rolled-back deploy). */
  unknown: string[];
  /** With `ttl: 'new-tables'`: tables this run left with a TTL other than the configured one (days, 0 for none). */
  ttlDiffers: Array<{ table: string; days: number }>;
}

export interface ClickHouseMigrationOptions {
  dir?: string;
  log?: (message: string) => void;
  /**
   * 'set' (migrate:clickhouse, the default): bring every mirror table's TTL to
   * CLICKHOUSE_TTL_DAYS. 'new-tables' (the API at startup): only on tables this
   * run created. A TTL change rewrites a table's parts, and replicas started
   * with different settings would otherwise keep changing it back and forth:
   * differences are reported in `ttlDiffers` for the caller to log.
   */
  ttl?: 'set' | 'new-tables';
}

export class ClickHouseMigrationError extends Error {
  override name = 'ClickHouseMigrationError';
}

/**
 * Splits a file into statements at semicolons outside string literals,
 * quoted identifiers and comments. Statements that are only comments are dropped.
 */
export function splitStatements(sql: string): string[] {
  const statements: string[] = [];
  let start = 0;
  let hasCode = false;
  let i = 0;
  const n = sql.length;
  const flush = (end: number) => {
    const text = sql.slice(start, end).trim();
    if (hasCode && text) statements.push(text);
    hasCode = false;
  };
  while (i < n) {
    const c = sql[i];
    if (c === '-' && sql[i + 1] === '-') {
      const eol = sql.indexOf('\n', i);
      i = eol === -1 ? n : eol + 1;
    } else if (c === '/' && sql[i + 1] === '*') {
      const close = sql.indexOf('*/', i + 2);
      if (close === -1) throw new ClickHouseMigrationError('unterminated /* comment');
      i = close + 2;
    } else if (c === "'" || c === '"' || c === '`') {
      hasCode = true;
      i++;
      for (;;) {
        if (i >= n) throw new ClickHouseMigrationError(`unterminated ${c} quote`);
        if (sql[i] === '\\') i += 2;
        else if (sql[i] === c && sql[i + 1] === c) i += 2;
        else if (sql[i] === c) break;
        else i++;
      }
      i++;
    } else if (c === ';') {
      flush(i);
      start = ++i;
    } else {
      if (!/\s/.test(c)) hasCode = true;
      i++;
    }
  }
  flush(n);
  return statements;
}

export async function readClickHouseMigrations(dir = CLICKHOUSE_MIGRATIONS_DIR): Promise<ClickHouseMigration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const migrations: ClickHouseMigration[] = [];
  for (const file of files) {
    const match = FILE_NAME.exec(file);
    if (!match) throw new ClickHouseMigrationError(`${file}: ClickHouse migrations are named NNNN_name.sql (lower case)`);
    // Line endings from a Windows checkout must not look like an edit.
    const text = (await readFile(path.join(dir, file), 'utf8')).replace(/\r\n/g, '\n');
    const version = Number(match[1]);
    if (migrations.some((m) => m.version === version)) {
      throw new ClickHouseMigrationError(`${file}: two migrations have version ${match[1]}`);
    }
    const statements = splitStatements(text);
    if (statements.length === 0) throw new ClickHouseMigrationError(`${file} has no statements`);
    migrations.push({
      version,
      name: file.slice(0, -'.sql'.length),
      checksum: createHash('sha256').update(text).digest('hex'),
      statements,
    });
  }
  return migrations;
}

/**
 * Creates the database if needed and brings it to the latest migration and
 * the configured TTL. Running it again changes nothing. Throws when the
 * server does not answer, when an applied file has since been edited, or
 * when a mirror table there is not one the mirror can write (see
 * mirrorTableProblems).
 */
export async function migrateClickHouse(
  config: AppConfig['clickhouse'],
  url: string,
  options: ClickHouseMigrationOptions = {},
): Promise<ClickHouseMigrationResult> {
  const log = options.log ?? (() => undefined);
  const migrations = await readClickHouseMigrations(options.dir);
  // The configured database may not exist yet, and a request naming it would fail; `default` always exists.
  const admin = createClient(ddlClientOptions(config, url, 'default'));
  const ddl = createClient(ddlClientOptions(config, url, config.database));
  // The ping and every read are ordinary requests: a server that does not answer fails them within
  // CLICKHOUSE_REQUEST_TIMEOUT_MS (and the API's DDL retries) rather than holding the run, and every insert
  // waiting on it, for DDL_TIMEOUT_MS. Only statements that change the schema get that long.
  const reads = createClient({ ...ddlClientOptions(config, url, 'default'), request_timeout: config.requestTimeoutMs });
  try {
    const ping = await reads.ping();
    if (!ping.success) {
      throw new ClickHouseMigrationError(`ClickHouse at ${redactUrl(url)} does not answer: ${describeSendError(ping.error)}`, { cause: ping.error });
    }
    // Created only when missing: ClickHouse checks the CREATE grant before IF NOT EXISTS, and a user granted
    // only the database an administrator made for it must still be able to run this on a current schema.
    if (!(await exists(reads, 'SELECT 1 FROM system.databases WHERE name = {database:String}', { database: config.database }))) {
      await command(admin, `CREATE DATABASE IF NOT EXISTS ${identifier(config.database)}`);
    }
    // With 'new-tables', the TTL is left alone on tables that exist before this run; 'set' leaves none alone.
    const existedBefore = options.ttl === 'new-tables' ? await readTtlDays(reads, config.database, MIRROR_TABLES) : new Map<string, number>();
    // Created once the mirror tables there have passed their check (below): a refused run leaves no ledger behind.
    const hasLedger = await exists(reads, "SELECT 1 FROM system.tables WHERE database = {database:String} AND name = 'schema_migrations'", {
      database: config.database,
    });
    const applied = hasLedger ? await appliedMigrations(reads, config.database) : new Map<number, { name: string; checksum: string }>();
    const newest = Math.max(0, ...migrations.map((m) => m.version));
    const unknown: string[] = [];
    for (const [version, row] of applied) {
      const file = migrations.find((m) => m.version === version);
      // Later than every file here: a newer build's, which (README "Migrations") only adds what this build can ignore.
      if (!file && version > newest) {
        unknown.push(row.name);
        continue;
      }
      if (!file) {
        throw new ClickHouseMigrationError(
          `ClickHouse database ${config.database} has migration ${row.name} applied, which is not in the migrations folder though a later one is: was it renamed or deleted?`,
        );
      }
      if (file.checksum !== row.checksum) {
        throw new ClickHouseMigrationError(
          `migrations/clickhouse/${file.name}.sql was changed after it was applied to ${config.database} ` +
            `(checksum ${row.checksum.slice(0, 12)} applied, ${file.checksum.slice(0, 12)} now): ` +
            'add a new migration instead of editing an applied one',
        );
      }
    }

    const pending = migrations.filter((m) => !applied.has(m.version));
    if (unknown.length > 0 && pending.length > 0) {
      throw new ClickHouseMigrationError(
        `ClickHouse database ${config.database} has a newer build's migrations (${unknown.join(', ')}) but not this build's ${pending.map((m) => m.name).join(', ')}: ` +
          'migrate it with the newer build',
      );
    }
    const pendingTables = new Set<string>(pending.flatMap(tablesCreatedBy));
    // A table a pending migration creates may be there already (made otherwise, or by a run of that migration that
    // failed before recording it). Its CREATE TABLE IF NOT EXISTS would pass over it, so it is checked now, before
    // any migration is applied or recorded, but for the columns a pending ALTER TABLE adds to it: the check after
    // the run covers those.
    const added = new Set(pending.flatMap((m) => m.statements.flatMap(columnsAddedBy)));
    const alreadyThere = MIRROR_TABLES.filter((table) => pendingTables.has(table));
    const before = await mirrorTableProblems(reads, config.database, alreadyThere, (table, column) => added.has(`${table}.${column}`));
    refuseMirrorTables(config.database, before, 'no migration was applied');
    if (!hasLedger) {
      await command(
        ddl,
        `CREATE TABLE IF NOT EXISTS schema_migrations
         (version UInt32, name String, checksum String, applied_at DateTime64(6, 'UTC'))
         ENGINE = ReplacingMergeTree ORDER BY version`,
      );
    }
    // A table a pending migration creates, there already without a TTL, is this run's: an earlier run created it
    // and failed before recording the migration, its TTL not set yet (see below). One with a TTL was made
    // otherwise (restored, or by hand), and keeps it.
    const leftAlone = new Set([...existedBefore].filter(([table, days]) => !(pendingTables.has(table) && days === 0)).map(([table]) => table));
    const ttlChanges: Array<{ table: string; days: number }> = [];
    const done: string[] = [];
    for (const migration of pending) {
      for (const statement of migration.statements) {
        try {
          await command(ddl, statement);
        } catch (error) {
          throw new ClickHouseMigrationError(`ClickHouse migration ${migration.name} failed: ${(error as Error).message}`, { cause: error });
        }
      }
      // The TTL of the tables it creates, before it is recorded: a run that fails after it would leave a table
      // without its TTL that the next run, finding it there, left alone for good.
      const created: string[] = tablesCreatedBy(migration).filter((table) => !leftAlone.has(table));
      try {
        if (created.length > 0) ttlChanges.push(...(await applyTtl({ reads, ddl }, config.database, config.ttlDays, (table) => created.includes(table))).changed);
      } catch (error) {
        throw new ClickHouseMigrationError(`ClickHouse migration ${migration.name} failed setting its tables' TTL: ${(error as Error).message}`, { cause: error });
      }
      await command(
        ddl,
        'INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ({version:UInt32}, {name:String}, {checksum:String}, now64(6))',
        { version: migration.version, name: migration.name, checksum: migration.checksum },
      );
      log(`applied ClickHouse migration ${migration.name}`);
      done.push(migration.name);
    }

    const { changed, differs: ttlDiffers } = await applyTtl({ reads, ddl }, config.database, config.ttlDays, (table) => !leftAlone.has(table));
    const ttl = [...ttlChanges, ...changed];
    for (const change of ttl) {
      log(change.days ? `set TTL on ${change.table}: ${change.days} days after created_at` : `removed TTL from ${change.table}`);
    }
    // Every run: a table altered by hand since its migration fails here, not in every insert the mirror makes.
    refuseMirrorTables(config.database, await mirrorTableProblems(reads, config.database, MIRROR_TABLES, () => false), 'the migrations were applied');
    return { applied: done, ttl, unknown, ttlDiffers };
  } finally {
    await Promise.allSettled([admin.close(), ddl.close(), reads.close()]);
  }
}

/**
 * What keeps the mirror from writing the `tables` that are there. Each must be a ReplacingMergeTree versioned by
 * `version` and `is_deleted`, sorted by the row's identity (an update or a delete is a new version of the row,
 * which replaces the old one), and hold every column the mirror writes but those `notYet` says a pending migration
 * adds. A table of the same name made otherwise (by hand, or by another application sharing the database) would
 * fail every insert into it, each batch becoming a gap, or take them and merge rows that are not versions of one
 * another.
 */
async function mirrorTableProblems(
  client: ClickHouseClient,
  database: string,
  tables: readonly MirrorTable[],
  notYet: (table: MirrorTable, column: string) => boolean,
): Promise<string[]> {
  if (tables.length === 0) return [];
  const params = { database, tables: [...tables] };
  const found = await rows<{ name: MirrorTable; engine: string; engine_full: string; sorting_key: string; partition_key: string }>(
    client,
    'SELECT name, engine, engine_full, sorting_key, partition_key FROM system.tables WHERE database = {database:String} AND name IN {tables:Array(String)} ORDER BY name',
    params,
  );
  if (found.length === 0) return [];
  const columns = await rows<{ table: string; name: string }>(
    client,
    'SELECT table, name FROM system.columns WHERE database = {database:String} AND table IN {tables:Array(String)}',
    params,
  );
  const problems: string[] = [];
  const compact = (text: string) => text.replace(/\s+/g, '');
  for (const { name: table, engine, engine_full, sorting_key, partition_key } of found) {
    const shape = MIRROR_TABLE_SHAPES[table];
    // Replicated and Shared (ClickHouse Cloud) variants end alike, their own arguments ahead of ours.
    if (!engine.endsWith('ReplacingMergeTree')) problems.push(`${table} is a ${engine}, not a ReplacingMergeTree`);
    else if (!/^\w*ReplacingMergeTree\((?:[^()]*,\s*)?version,\s*is_deleted\)/.test(engine_full)) {
      problems.push(`${table} is not versioned by (version, is_deleted): ${engine_full.split(/\s(?:PARTITION|ORDER|PRIMARY|TTL|SETTINGS)\s/)[0]}`);
    }
    if (compact(sorting_key) !== compact(shape.sortingKey)) problems.push(`${table} is sorted by (${sorting_key}), not (${shape.sortingKey})`);
    if (compact(partition_key) !== compact(shape.partitionKey)) {
      problems.push(`${table} is partitioned by ${partition_key ? `(${partition_key})` : 'nothing'}, not (${shape.partitionKey})`);
    }
    const has = new Set(columns.filter((c) => c.table === table).map((c) => c.name));
    const missing = shape.columns.filter((column) => !has.has(column) && !notYet(table, column));
    if (missing.length > 0) problems.push(`${table} has no column${missing.length === 1 ? '' : 's'} ${missing.join(', ')}`);
  }
  return problems;
}

function refuseMirrorTables(database: string, problems: string[], state: string): void {
  if (problems.length === 0) return;
  throw new ClickHouseMigrationError(
    `ClickHouse database ${database} has tables the mirror cannot write (${state}): ${problems.join('; ')}. ` +
      'Rename or drop them, or set CLICKHOUSE_DATABASE to a database of their own for the mirror ' +
      '(or, after a change to the mirror, add the migration its columns need)',
  );
}

/**
 * `table.column` for each column an `ALTER TABLE <mirror table> ... ADD COLUMN` statement adds, its leading
 * comments skipped; names bare or quoted. Conservative: reading a column that is not added only leaves it to
 * the check after the run.
 */
export function columnsAddedBy(statement: string): string[] {
  const code = withoutLeadingComments(statement);
  const head = /^ALTER\s+TABLE\s+/i.exec(code);
  const target = head && tableNamed(code.slice(head[0].length));
  if (!target || !isMirrorTable(target.table)) return [];
  const table = target.table;
  const adds = code.slice(head[0].length + target.length).matchAll(/\bADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:`([^`]+)`|"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*))/gi);
  return [...adds].map((m) => `${table}.${m[1] ?? m[2] ?? m[3]}`);
}

function ddlClientOptions(config: AppConfig['clickhouse'], url: string, database: string): ClickHouseClientConfigOptions {
  const base = clickHouseClientOptions(config, url, database);
  return {
    ...base,
    request_timeout: DDL_TIMEOUT_MS,
    // Every failure is thrown with the migration it belongs to; the client's own log would say it twice.
    log: { level: ClickHouseLogLevel.OFF },
    // Progress headers keep a long ALTER's idle connection alive through load balancers.
    clickhouse_settings: { ...base.clickhouse_settings, send_progress_in_http_headers: 1, http_headers_progress_interval_ms: '10000' },
  };
}

async function command(client: ClickHouseClient, query: string, params?: Record<string, unknown>): Promise<void> {
  // wait_end_of_query: the answer comes only when the DDL has finished, so the next statement can rely on it.
  await client.command({ query, query_params: params, clickhouse_settings: { wait_end_of_query: 1 } });
}

async function appliedMigrations(client: ClickHouseClient, database: string): Promise<Map<number, { name: string; checksum: string }>> {
  const applied = await rows<{ version: number; name: string; checksum: string }>(
    client,
    `SELECT version, name, checksum FROM ${identifier(database)}.schema_migrations FINAL ORDER BY version`,
  );
  return new Map(applied.map((r) => [Number(r.version), { name: r.name, checksum: r.checksum }]));
}

/**
 * Brings the TTL of each mirror table `mayChange` allows to `days` (0: none),
 * touching only tables that differ; the others that differ are returned as
 * they are.
 */
async function applyTtl(
  clients: { reads: ClickHouseClient; ddl: ClickHouseClient },
  database: string,
  days: number,
  mayChange: (table: string) => boolean,
): Promise<{ changed: Array<{ table: string; days: number }>; differs: Array<{ table: string; days: number }> }> {
  const changes: Array<{ table: string; days: number }> = [];
  const differs: Array<{ table: string; days: number }> = [];
  for (const [name, current] of await readTtlDays(clients.reads, database, MIRROR_TABLES)) {
    if (current === days) continue;
    if (!mayChange(name)) {
      differs.push({ table: name, days: current });
      continue;
    }
    if (days === 0) {
      await command(clients.ddl, `ALTER TABLE ${identifier(name)} REMOVE TTL`);
    } else {
      // created_at never changes, so a row's expiry is fixed when it is first written.
      await command(clients.ddl, `ALTER TABLE ${identifier(name)} MODIFY TTL toDateTime(created_at) + INTERVAL ${days} DAY`);
    }
    changes.push({ table: name, days });
  }
  return { changed: changes, differs };
}

/**
 * The mirror tables a migration creates: `CREATE [OR REPLACE] TABLE [IF NOT EXISTS] [db.]name`, after the
 * statement's leading comments, with names bare or quoted in backticks or double quotes. A CREATE TABLE whose
 * name cannot be read so is refused, rather than its table left without its TTL.
 */
export function tablesCreatedBy(migration: { name: string; statements: string[] }): MirrorTable[] {
  return migration.statements.flatMap((statement) => {
    const code = withoutLeadingComments(statement);
    const head = /^CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\b\s*(?:IF\s+NOT\s+EXISTS\b\s*)?/i.exec(code);
    if (!head) return [];
    const name = tableNamed(code.slice(head[0].length));
    if (!name) throw new ClickHouseMigrationError(`ClickHouse migration ${migration.name}: cannot read the name of the table a CREATE TABLE makes`);
    return isMirrorTable(name.table) ? [name.table] : [];
  });
}

/** The table a statement names at the start of `text` (`[db.]name`), and how many characters the name took. */
function tableNamed(text: string): { table: string; length: number } | null {
  const name = new RegExp(`^${IDENTIFIER}(?:\\s*\\.\\s*${IDENTIFIER})?`).exec(text);
  if (!name) return null;
  // The last identifier read is the table's (the first, when there are two, its database's).
  return { table: name[4] ?? name[5] ?? name[6] ?? name[1] ?? name[2] ?? name[3], length: name[0].length };
}

const isMirrorTable = (name: string): name is MirrorTable => (MIRROR_TABLES as readonly string[]).includes(name);

/** A name as ClickHouse reads one: in backticks, in double quotes, or bare (then ending where a name cannot go on). */
const IDENTIFIER = '(?:`([^`]+)`|"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*)(?![A-Za-z0-9_]))';

/** A statement from its first token: leading whitespace, `--` lines and (nested) block comments skipped. */
function withoutLeadingComments(statement: string): string {
  let rest = statement;
  for (;;) {
    rest = rest.trimStart();
    if (rest.startsWith('--')) {
      const end = rest.indexOf('\n');
      rest = end < 0 ? '' : rest.slice(end + 1);
    } else if (rest.startsWith('/*')) {
      let depth = 0;
      let i = 0;
      for (; i < rest.length; i++) {
        if (rest.startsWith('/*', i)) {
          depth++;
          i++;
        } else if (rest.startsWith('*/', i)) {
          depth--;
          i++;
          if (depth === 0) break;
        }
      }
      rest = rest.slice(i + 1);
    } else {
      return rest;
    }
  }
}

/** A read's rows, as JSON objects. */
async function rows<Row>(client: ClickHouseClient, query: string, params?: Record<string, unknown>): Promise<Row[]> {
  const result = await client.query({ query, query_params: params, format: 'JSONEachRow' });
  return result.json<Row>();
}

async function exists(client: ClickHouseClient, query: string, params: Record<string, unknown>): Promise<boolean> {
  return (await rows(client, query, params)).length > 0;
}

/** Each existing table's TTL in days (see currentTtlDays), by name. */
export async function readTtlDays(client: ClickHouseClient, database: string, tables: readonly string[]): Promise<Map<string, number>> {
  const found = await rows<{ name: string; engine_full: string }>(
    client,
    'SELECT name, engine_full FROM system.tables WHERE database = {database:String} AND name IN {tables:Array(String)} ORDER BY name',
    { database, tables: [...tables] },
  );
  return new Map(found.map(({ name, engine_full }) => [name, currentTtlDays(engine_full)]));
}

/** The table's TTL in days as this runner writes it, 0 for none, -1 for a TTL of another shape. */
export function currentTtlDays(engineFull: string): number {
  if (!/\sTTL\s/.test(engineFull)) return 0;
  const ours = /\sTTL toDateTime\(created_at\) \+ toIntervalDay\((\d+)\)(?:\s|$)/.exec(engineFull);
  return ours ? Number(ours[1]) : -1;
}

function identifier(name: string): string {
  return `\`${name.replace(/\\/g, '\\\\').replace(/`/g, '\\`')}\``;
}
