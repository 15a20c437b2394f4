import { readFileSync } from 'node:fs';
import { join } from 'node:path';
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
 * Started, detached, with the server. Arguments: <port> <postmaster pid>
 * <starter pid> <data directory>.
 */

const POLL_MS = 1_000;

async function main(): Promise<void> {
  const [port, postmaster, starter] = process.argv.slice(2, 5).map(Number);
  const dataDir = process.argv[5];
  /**
   * The server is still the one this keeper keeps: its process runs, and its
   * data directory's lock file names it. A pid alone could be reused by an
   * unrelated process once the server has gone, and signalled.
   */
  const keeps = (): boolean => {
    if (!processAlive(postmaster)) return false;
    try {
      return Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]) === postmaster;
    } catch (error) {
      // Gone: the server shut down. Unreadable (a root without the right to read the postgres user's
      // directory): the pid is all there is to go by.
      return (error as NodeJS.ErrnoException).code !== 'ENOENT';
    }
  };
  let client: Client | undefined;
  for (;;) {
    await new Promise((done) => setTimeout(done, POLL_MS));
    // Stopped (by its starter, or anyone), or a failed start: nothing left to keep.
    if (!keeps()) return;
    if (processAlive(starter)) continue;
    try {
      client ??= await connect(port);
      if ((await sessionsOfOtherProcesses(client)) > 0) continue;
    } catch {
      // Not answering yet (its starter died while it started up, or it is recovering), no session free
      // (too many clients), or this session ended: look again. Giving up here would leave it running for good.
      await client?.end().catch(() => undefined);
      client = undefined;
      continue;
    }
    if (!keeps()) return;
    // SIGINT is Postgres's fast shutdown; it ends this session too.
    process.kill(postmaster, 'SIGINT');
    return;
  }
}

async function connect(port: number): Promise<Client> {
  const client = new Client({ connectionString: localPostgresUrl(port, 'postgres'), application_name: KEEPER_APPLICATION_NAME, connectionTimeoutMillis: 5_000 });
  // A session the server ends fails the next query, which the loop handles; the event must not crash this process.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => undefined);
    throw error;
  }
  return client;
}

main().then(
  () => process.exit(0),
  () => process.exit(1),
);
