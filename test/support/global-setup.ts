import { Client } from 'pg';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { migrateToLatest } from '../../src/dbs/postgres/postgres-migrator';
import { provideClickHouse, providePostgres, ProvidedServer } from './servers';

export const TEMPLATE_DATABASE = 'tracing_template';

/**
 * Starts the servers once per jest run (side by side, to keep setup short)
 * and builds a migrated Postgres template database; each spec clones it
 * (CREATE DATABASE ... TEMPLATE), which is much faster than migrating per spec
 * and keeps specs isolated. ClickHouse specs create their own databases (see
 * clickhouse.ts).
 */
export default async function globalSetup(): Promise<void> {
  const started = await Promise.allSettled([providePostgres(), provideClickHouse()]);
  const servers = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  (globalThis as { __servers?: ProvidedServer[] }).__servers = servers;
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.allSettled(servers.map((server) => server.stop()));
    throw failed.reason;
  }
  const [postgres, clickhouse] = servers;
  process.env.TEST_CLICKHOUSE_URL = clickhouse.url;

  const admin = new Client({ connectionString: postgres.url });
  await admin.connect();
  await admin.query(`drop database if exists ${TEMPLATE_DATABASE}`);
  await admin.query(`create database ${TEMPLATE_DATABASE}`);
  await admin.end();

  const templateUrl = withDatabase(postgres.url, TEMPLATE_DATABASE);
  const db = createKysely(createPool(templateUrl, 1));
  await migrateToLatest(db);
  await db.destroy();

  process.env.TEST_PG_ADMIN_URL = postgres.url;
  process.env.TEST_PG_TEMPLATE = TEMPLATE_DATABASE;
}

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}
