import { Client } from 'pg';
import { sessionsOfOtherProcesses } from '../../src/dbs/postgres/local-postgres';
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
  afterAll(async () => {
    await Promise.all(clients.map((client) => client.end().catch(() => undefined)));
    await postgres?.stop();
    await owned?.remove();
  });

  const connect = async (applicationName?: string) => {
    const client = new Client({ connectionString: postgres.url, application_name: applicationName });
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
});
