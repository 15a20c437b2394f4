import { withoutUrlOptions } from './postgres-pool';
import { Client, Pool } from 'pg';
import { within } from '../../within';

/** How long ending the sessions may take, connect included: shutdown goes on without it after that. */
export const END_SESSIONS_TIMEOUT_MS = 5_000;

/**
 * The API pool's connections lent out to requests right now, and the means
 * to end them. A shutdown that has stopped waiting for requests
 * (SHUTDOWN_TIMEOUT_MS), or whose requests' clients have hung up, ends
 * their Postgres sessions before it closes anything else: their open
 * transactions roll back, so no write commits after its client was told
 * nothing (or, for a request still able to answer, told 503 "retry"), and
 * shutdown is not held up by a statement waiting on a lock. A COMMIT already
 * on the wire may still land; that one window no client can close (see
 * createPool), and verify finds a row the mirror missed there.
 */
export class InFlightSessions {
  private readonly lent = new Set<Client>();
  private ended = false;

  constructor(
    pool: Pool,
    private readonly url: string,
  ) {
    pool.on('acquire', (client) => {
      // A request that was waiting for a connection gets the one an ended session freed. Closed before it is
      // handed over, it fails its first statement (a 503) without sending it: nothing it would write can commit.
      if (this.ended) return void client.end().catch(() => undefined);
      this.lent.add(client);
    });
    pool.on('release', (_error, client) => this.lent.delete(client));
    pool.on('remove', (client) => this.lent.delete(client));
  }

  /**
   * Ends every lent-out session (pg_terminate_backend, from a session of its
   * own), and closes every session lent from now on; resolves to how many
   * ended. The mirror's gap records have a pool of their own (MIRROR_KYSELY).
   * Rejects after END_SESSIONS_TIMEOUT_MS when Postgres does not answer (a
   * hung server would otherwise hold shutdown on a query with no timeout).
   */
  async end(): Promise<number> {
    this.ended = true;
    const pids = [...this.lent].map((client) => (client as Client & { processID: number | null }).processID).filter((pid): pid is number => typeof pid === 'number');
    if (pids.length === 0) return 0;
    // The connect's own timeout is later than the bound below, so a hang anywhere reads as the same error.
    // The URL's own settings taken out as the pools' are: its query_timeout ('0', a string to pg) failed the query at once.
    const admin = new Client({ connectionString: withoutUrlOptions(this.url).connectionString, connectionTimeoutMillis: END_SESSIONS_TIMEOUT_MS + 1_000 });
    // A connection lost meanwhile (Postgres restarting under the shutdown) is the query's error, not a crash.
    admin.on('error', () => undefined);
    const terminated = (async () => {
      await admin.connect();
      const { rows } = await admin.query<{ ended: string }>('select count(*) filter (where pg_terminate_backend(pid)) as ended from unnest($1::int[]) as pid', [pids]);
      return Number(rows[0].ended);
    })();
    try {
      return await within(terminated, END_SESSIONS_TIMEOUT_MS, () => {
        throw new Error(`Postgres did not answer within ${END_SESSIONS_TIMEOUT_MS} ms`);
      });
    } finally {
      terminated.catch(() => undefined);
      // Not awaited: a hung server never answers the goodbye either.
      void admin.end().catch(() => undefined);
    }
  }
}
