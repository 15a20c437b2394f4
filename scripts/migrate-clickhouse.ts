import { parseConfig } from '../src/config/app-config';
import { migrateClickHouse } from '../src/dbs/clickhouse/clickhouse-ddl-runner';
import { resolveClickHouse } from '../src/dbs/clickhouse/local-clickhouse';
import { runCli, UsageError } from './cli/run-cli';

const USAGE = `usage: npm run migrate:clickhouse

  Creates the ClickHouse database (CLICKHOUSE_DATABASE) if needed, applies every
  pending migrations/clickhouse/NNNN_name.sql in order, then sets the mirror
  tables' TTL from CLICKHOUSE_TTL_DAYS (0 removes it). Connects to
  CLICKHOUSE_URL, or to the local server (started if nothing answers).`;

runCli(USAGE, async (args, log) => {
  if (args.length > 0) throw new UsageError(`unknown arguments: ${args.join(' ')}`);
  const config = parseConfig();
  const server = await resolveClickHouse(config.clickhouse, log);
  try {
    const result = await migrateClickHouse(config.clickhouse, server.url, { log });
    if (result.unknown.length) log(`note: the database has migrations this build does not know (${result.unknown.join(', ')}): a newer build applied them; left as they are`);
    if (result.applied.length === 0 && result.ttl.length === 0) {
      log(`nothing to do: ClickHouse database ${config.clickhouse.database} is up to date`);
    }
  } finally {
    await server.stop?.();
  }
});
