import { once } from 'node:events';
import { parseConfig } from '../../src/config/app-config';
import { resolveClickHouse } from '../../src/dbs/clickhouse/local-clickhouse';
import { resolvePostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * A command that needs both stores (as backfill and verify do): resolves them
 * from the environment (starting the embedded servers when nothing answers),
 * prints their URLs, and on a line on stdin stops what it started, as a
 * command does when it ends, then prints what it logged.
 */
async function main(): Promise<void> {
  const config = parseConfig();
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const postgres = await resolvePostgres(config.postgres, log);
  const clickhouse = await resolveClickHouse(config.clickhouse, log);
  process.stdout.write(`${JSON.stringify({ postgres: postgres.url, clickhouse: clickhouse.url })}\n`);
  await once(process.stdin, 'data');
  await clickhouse.stop?.();
  await postgres.stop?.();
  process.stdout.write(`${JSON.stringify({ logs })}\n`);
  process.stdin.destroy();
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
