import { Client } from 'pg';
import { claimStop, holdServer, sessionsOfOtherProcesses } from '../../src/dbs/postgres/local-postgres';
import { createPool, endPool } from '../../src/dbs/postgres/postgres-pool';
import { OwnedPostgres, ownPostgres, PostgresProcess } from '../support/postgres-process';

/**
 * Whether the embedded server is still in use by another process decides if
 * the process that started it stops it. A session of this process's own
 * pools (one endPool gave up waiting for) must not count as another's.
 * This spec owns its server: the run's shared one has other workers' sessions.
 */
describe('sessionsOfOtherProcesses', () => {
  let owned: OwnedPostgres;
  let postgres: PostgresProcess;
  const clients: Client[] = [];

  beforeAll(async () => {
    owned = await ownPostgres('tracing-other-sessions-pg-');
    postgres = await owned.start();
  });
  // Each test counts from none: the sessions it opened end with it.
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.end().catch(() => undefined)));
  });
  afterAll(async () => {
    await postgres?.stop();
    await owned?.remove();
  });

  const connect = async (applicationName?: string) => {
    const client = new Client({ connectionString: postgres.url, application_name: applicationName });
    client.on('error', () => undefined);
    clients.push(client);
    await client.connect();
    return client;
  };

  it("counts other processes' sessions, named or not, and not this process's pools'", async () => {
    const asking = await connect();
    const pool = createPool(postgres.url, 2);
    await Promise.all([pool.query('select pg_sleep(0.05)'), pool.query('select pg_sleep(0.05)')]);
    expect(pool.totalCount).toBe(2);
    expect(await sessionsOfOtherProcesses(asking)).toBe(0);

    await connect('another process');
    expect(await sessionsOfOtherProcesses(asking)).toBe(1);
    await connect();
    expect(await sessionsOfOtherProcesses(asking)).toBe(2);
    await endPool(pool);
  });

  // Decided on the server: two `npm run migrate` at once had one stop the server between the other's join and
  // its next statement ("terminating connection due to administrator command"), the count having found no hold.
  describe('the stop, claimed on the server', () => {
    const releases: Array<() => void> = [];
    afterEach(() => releases.splice(0).forEach((release) => release()));

    const hold = async () => {
      const release = await holdServer(postgres.url);
      if (release) releases.push(release);
      return release;
    };

    it('refuses a hold while it is claimed, and lets holds in again once the claiming session ends', async () => {
      const claiming = await connect();
      expect(await claimStop(claiming)).toEqual({ claimed: true, others: 0 });
      expect(await hold()).toBeUndefined();
      await claiming.end();
      expect(await hold()).toEqual(expect.any(Function));
    });

    // The hold here is this process's, which the count leaves out: only the lock keeps the stop from being claimed.
    it('is not claimed while a process holds the server, nor once it lets go with another session left', async () => {
      const asking = await connect();
      const release = await hold();
      expect(await claimStop(asking)).toEqual({ claimed: false, others: 1 });
      release!();
      await connect('another process');
      for (const deadline = Date.now() + 5_000; (await sessionsOfOtherProcesses(asking)) > 1; await new Promise((done) => setTimeout(done, 50))) {
        if (Date.now() > deadline) throw new Error('the released hold is still in pg_stat_activity');
      }
      expect(await claimStop(asking)).toEqual({ claimed: false, others: 1 });
      // Not claimed, the lock was let go: a hold is let in.
      expect(await hold()).toEqual(expect.any(Function));
    });
  });
});
