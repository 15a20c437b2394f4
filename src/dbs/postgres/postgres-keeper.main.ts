import { Client } from 'pg';
import { KEEPER_APPLICATION_NAME, localPostgresUrl, sessionsOfOtherProcesses } from './local-postgres';

/**
 * The owner of an embedded PostgreSQL that the process which started it left
 * running for others (an API that had joined a backfill's server): stops it
 * once no other process has a session on it, as that process would have.
 * Every process that joins the server holds a session on it while it runs
 * (see startLocalPostgres), so none left means nobody uses it. Started,
 * detached, by the starter's stop(). Arguments: <port> <postmaster pid>.
 */

const POLL_MS = 1_000;

async function main(): Promise<void> {
  const [port, postmasterPid] = process.argv.slice(2);
  const client = new Client({ connectionString: localPostgresUrl(Number(port), 'postgres'), application_name: KEEPER_APPLICATION_NAME, connectionTimeoutMillis: 5_000 });
  // The server gone (stopped, or killed and started anew by another command): nothing left to keep.
  client.on('error', () => process.exit(0));
  client.on('end', () => process.exit(0));
  await client.connect();
  for (;;) {
    await new Promise((done) => setTimeout(done, POLL_MS));
    if ((await sessionsOfOtherProcesses(client)) > 0) continue;
    // SIGINT is Postgres's fast shutdown; it ends this session too, and with it this process.
    process.kill(Number(postmasterPid), 'SIGINT');
    return;
  }
}

main().catch(() => process.exit(1));
