import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { processAlive, processStartTime } from '../process-alive';
import { claimStop, KEEPER_APPLICATION_NAME, localPostgresUrl, sessionsOfOtherProcesses } from './local-postgres';

/**
 * The owner of an embedded PostgreSQL once the process that started it has
 * ended without stopping it: left running for an API that had joined a
 * backfill's server, or a command interrupted (process.exit), crashed or
 * killed with -9. It stops the server once no other process has a session on
 * it. Every process that joins the server holds a session on it while it runs
 * (see startLocalPostgres), so none left means nobody uses it; the stop is
 * claimed on the server (claimStop) so that none joins as it stops. While the
 * starter runs, the starter decides (it stops the server when it ends).
 * Started, detached, with the server. Arguments: <port> <postmaster pid>
 * <starter pid> <data directory> [<postmaster start time>, as
 * processStartTime gives it; empty where unknown].
 */

const POLL_MS = 1_000;
/**
 * How long the server must have no other process's session, look after
 * look, before it is stopped. A server that restarts after a backend's
 * crash ends every session, holds included, and the processes holding it
 * take theirs again within a second or two (holdServer).
 */
const QUIET_MS = 3_000;
const CANNOT_CONNECT_NOW = '57P03';

async function main(): Promise<void> {
  const [port, postmaster, starter] = process.argv.slice(2, 5).map(Number);
  const dataDir = process.argv[5];
  const startTime = process.argv[6] || null;
  /**
   * The server is still the one this keeper keeps: its process runs, started
   * when the postmaster did, and its data directory's lock file names it. A
   * pid alone could be reused by an unrelated process once the server has
   * gone, and signalled. The start time tells them apart where /proc gives
   * it (Linux). The lock file does so too, but only once the server has
   * written it, and it stays behind when the server is killed with -9.
   * Until the file has named it, the pid is all the file check has: the
   * keeper starts with the postmaster, which may not have written its file
   * yet (a slow start), or not yet replaced a crashed server's.
   */
  let named = false;
  const keeps = (): boolean => {
    if (!processAlive(postmaster)) return false;
    if (startTime !== null && processStartTime(postmaster) !== startTime) return false;
    let holder: number;
    try {
      holder = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch (error) {
      // Unreadable (a root without the right to read the postgres user's directory): the pid is all there is.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') return true;
      return !named;
    }
    if (holder === postmaster) named = true;
    return holder === postmaster || !named;
  };
  let client: Client | undefined;
  /** It has taken this keeper's session: from then on, a refusal is no longer its first start-up. */
  let answered = false;
  /** Since when every look found no other process's session; undefined while one did, or the look failed. */
  let quietSince: number | undefined;
  for (;;) {
    await new Promise((done) => setTimeout(done, POLL_MS));
    // Stopped (by its starter, or anyone), or a failed start: nothing left to keep.
    if (!keeps()) return;
    if (processAlive(starter)) continue;
    try {
      client ??= await connect(port);
      answered = true;
      if ((await sessionsOfOtherProcesses(client)) > 0) {
        quietSince = undefined;
        continue;
      }
      quietSince ??= Date.now();
      if (Date.now() - quietSince < QUIET_MS) continue;
      // Decided on the server: a process joining from now on is refused, and one that joined since the look
      // keeps it running. Claimed, the lock stays with this session until the stop ends it.
      if (!(await claimStop(client)).claimed) {
        quietSince = undefined;
        continue;
      }
    } catch (error) {
      await client?.end().catch(() => undefined);
      client = undefined;
      quietSince = undefined;
      // Not answering at all yet, no session free (too many clients), recovering from a backend's crash
      // while others use it, or this session ended: look again. Giving up would leave it running for good.
      if (!stillStartingUp(error, answered)) continue;
      // Its starter died while it started up (crash recovery can take long): it has never taken a session,
      // of anyone's, so there is none to wait for.
    }
    if (!keeps()) return;
    // SIGINT is Postgres's fast shutdown; it ends this session too.
    process.kill(postmaster, 'SIGINT');
    return;
  }
}

/**
 * Refused as "starting up" (57P03) by a server that has never answered:
 * its first start-up, which takes no connection. After a backend's crash a
 * server in use refuses with the same code while it recovers ("in recovery
 * mode"); its users are still there. The server's messages are in English
 * (LC_MESSAGES=C, see startPostmaster).
 */
function stillStartingUp(error: unknown, answered: boolean): boolean {
  const { code, message } = error as { code?: string; message?: string };
  return !answered && code === CANNOT_CONNECT_NOW && /starting up/.test(message ?? '');
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
