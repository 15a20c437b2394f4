import { sql } from 'kysely';
import { AppConfig } from '../../src/config/app-config';
import { ClickHouseHistory } from '../../src/dbs/backfill/clickhouse-history';
import { HistoryScope, parseScopes, ScopeError, ScopeOptions } from '../../src/dbs/backfill/history-scope';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { resolveClickHouse } from '../../src/dbs/clickhouse/local-clickhouse';
import { ParsedFlags } from './flags';
import { namingPostgres, openPostgres, PostgresConnection } from './postgres-cli';
import { UsageError } from './run-cli';

/** What `backfill` and `verify` share: their scope options and their two servers. */

export function scopesFrom(flags: ParsedFlags, config: AppConfig): HistoryScope[] {
  const options: ScopeOptions = {
    entity: flags.values.get('--entity'),
    project: flags.values.get('--project'),
    since: flags.values.get('--since'),
    until: flags.values.get('--until'),
    mirroredProjects: config.clickhouse.projectIds,
  };
  try {
    return parseScopes(options);
  } catch (error) {
    if (error instanceof ScopeError) throw new UsageError(error.message);
    throw error;
  }
}


/** DATABASE_URL or the embedded server, migrated; fails with the (password-free) URL and what to do. */
export async function connectPostgres(config: AppConfig, log: (line: string) => void): Promise<PostgresConnection> {
  // One connection holds the run's advisory lock; the others read pages and write checkpoints.
  const postgres = await openPostgres(config, log, 4, { onConnectionLost: (error) => log(`Postgres connection lost: ${error.message}`) });
  try {
    const { rows } = await sql<{ table: string | null }>`select to_regclass('backfill_checkpoints')::text as table`.execute(postgres.db);
    if (rows[0].table === null) throw new Error(`${postgres.at} is not migrated (no table backfill_checkpoints): run \`npm run migrate\``);
  } catch (error) {
    await postgres.close();
    throw namingPostgres(postgres.at, error, 'run it again once it answers');
  }
  return postgres;
}

export interface ClickHouseConnection {
  history: ClickHouseHistory;
  close(): Promise<void>;
}

/** CLICKHOUSE_URL or the local server; fails when it does not answer or the mirror tables are missing. */
export async function connectClickHouse(config: AppConfig, log: (line: string) => void, task: 'backfill' | 'verify'): Promise<ClickHouseConnection> {
  const server = await resolveClickHouse(config.clickhouse, log);
  // The API's clients, with a longer timeout: big batches, mutations and streamed FINAL reads of a whole scope
  // outlast the API's per-request budget.
  const clients = createClickHouseClients(config.clickhouse, server.url, { requestTimeoutMs: Math.max(config.clickhouse.requestTimeoutMs, 120_000) });
  const history = new ClickHouseHistory(clients, { url: server.url, database: config.clickhouse.database, task });
  const close = async () => {
    await clients.close();
    await server.stop?.();
  };
  try {
    await history.checkReady();
  } catch (error) {
    await close();
    throw error;
  }
  return { history, close };
}

export const formatRate = (n: number): string => n.toLocaleString('en-US');
export const formatSeconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
