import { Client } from 'pg';
import { processAlive } from '../process-alive';
import { KEEPER_APPLICATION_NAME, localPostgresUrl, sessionsOfOtherProcesses } from './local-postgres';

/**
 * The owner of an embedded PostgreSQL once the process that started it has
 * ended without stopping it: left running for an API that had joined a
 * backfill's server, or a command interrupted (process.exit), crashed or
 * killed with -9. It stops the server once no other process has a session on
 * it. Every process that joins the server holds a session on it while it runs
 * (see startLocalPostgres), so none left means nobody uses it. While the
 * starter runs, the starter decides (it stops the server when it ends).
 * Started, detached, next to the server. Arguments: <port> <postmaster pid>
 * <starter pid>.
 */

const POLL_MS = 1_000;

async function main(): Promise<void> {
  const [port, postmaster, starter] = process.argv.slice(2).map(Number);
  let client: Client | undefined;
  for (;;) {
    await new Promise((done) => setTimeout(done, POLL_MS));
    // Stopped (by its starter, or anyone): nothing left to keep.
    if (!processAlive(postmaster)) return;
    if (processAlive(starter)) continue;
    if (!client) {
      client = new Client({ connectionString: localPostgresUrl(port, 'postgres'), application_name: KEEPER_APPLICATION_NAME, connectionTimeoutMillis: 5_000 });
      // The server gone (stopped, or killed and started anew by another command): nothing left to keep.
      client.on('error', () => process.exit(0));
      client.on('end', () => process.exit(0));
      await client.connect();
    }
    if ((await sessionsOfOtherProcesses(client)) > 0) continue;
    // SIGINT is Postgres's fast shutdown; it ends this session too, and with it this process.
    process.kill(postmaster, 'SIGINT');
    return;
  }
}

main().then(
  () => process.exit(0),
  () => process.exit(1),
);
