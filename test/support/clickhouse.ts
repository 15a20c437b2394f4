import { randomBytes } from 'node:crypto';
import { createClient } from '@clickhouse/client';
import { AppConfig, parseConfig } from '../../src/config/app-config';
import { ClickHouseClients, clickHouseClientOptions, createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { migrateClickHouse } from '../../src/dbs/clickhouse/clickhouse-ddl-runner';

export interface TestClickHouse {
  /** The server's URL, without credentials (they are in `config`). */
  url: string;
  database: string;
  config: AppConfig['clickhouse'];
  clients: ClickHouseClients;
  /** Closes this spec's clients and drops its database. */
  drop(): Promise<void>;
}

/** The run's ClickHouse server (see global-setup.ts) as config for a database of this name. */
export function testClickHouseConfig(database: string, overrides: Partial<AppConfig['clickhouse']> = {}): { url: string; config: AppConfig['clickhouse'] } {
  const serverUrl = process.env.TEST_CLICKHOUSE_URL;
  if (!serverUrl) throw new Error('test ClickHouse is not set up: run specs through jest (globalSetup)');
  const parsed = new URL(serverUrl);
  const user = decodeURIComponent(parsed.username) || 'default';
  const password = decodeURIComponent(parsed.password);
  parsed.username = '';
  parsed.password = '';
  const url = parsed.toString().replace(/\/$/, '');
  const base = parseConfig({}).clickhouse;
  return { url, config: { ...base, enabled: true, url, user, password, database, ...overrides } };
}

/**
 * A fresh ClickHouse database for one spec, migrated by the DDL runner (a
 * couple of CREATE TABLEs, so there is no template to clone).
 */
export async function createTestClickHouse(overrides: Partial<AppConfig['clickhouse']> = {}): Promise<TestClickHouse> {
  const database = `test_${randomBytes(6).toString('hex')}`;
  const { url, config } = testClickHouseConfig(database, overrides);
  await migrateClickHouse(config, url);
  const clients = createClickHouseClients(config, url);
  return {
    url,
    database,
    config,
    clients,
    drop: async () => {
      await clients.close();
      await dropClickHouseDatabase(config, url);
    },
  };
}

export async function dropClickHouseDatabase(config: AppConfig['clickhouse'], url: string): Promise<void> {
  // Not SYNC: that waits for every request still holding one of its tables, and after backfill-cli.spec interrupts
  // its commands the local endpoint was seen to keep one held past any timeout. Names are random, so none is reused.
  const admin = createClient(clickHouseClientOptions(config, url, 'default'));
  try {
    await admin.command({ query: `DROP DATABASE IF EXISTS \`${config.database}\`` });
  } finally {
    await admin.close();
  }
}
