import { Client, PoolClient } from 'pg';
import { END_SESSIONS_TIMEOUT_MS, InFlightSessions } from '../../src/dbs/postgres/in-flight-sessions';
import { createPool, endPool } from '../../src/dbs/postgres/postgres-pool';
import { createTestDatabase, TestDatabase } from '../support/postgres';
import { OwnedPostgres, ownPostgres, PostgresProcess } from '../support/postgres-process';

/**
 * A shutdown that has given up on its requests ends their sessions, so that
 * nothing they write commits after their clients were told nothing. A
 * request waiting for a connection then gets the one an ended session
 * freed: it must not be able to write either.
 */
describe('InFlightSessions', () => {
  let database: TestDatabase;
  let admin: Client;

  beforeAll(async () => {
    database = await createTestDatabase();
    admin = new Client({ connectionString: database.url });
    await admin.connect();
    await admin.query('create table shutdown_probe (note text)');
  });

  afterAll(async () => {
    await admin?.end();
    await database?.drop();
  });

  const notes = async () => (await admin.query<{ note: string }>('select note from shutdown_probe order by note')).rows.map((r) => r.note);

  it('ends the sessions lent out, and closes one lent afterwards before it can send a statement', async () => {
    const pool = createPool(database.url, 1);
    const sessions = new InFlightSessions(pool, database.url);
    const lent = await pool.connect();
    await lent.query('begin');
    await lent.query("insert into shutdown_probe values ('lent')");
    // A request queued behind the only connection, as requests queue behind slow ones.
    const queued = pool.connect();

    expect(await sessions.end()).toBe(1);

    const lentError = await lent.query('commit').then(() => null, (error: Error) => error);
    expect(lentError?.message).toMatch(/terminat|not queryable/);
    lent.release(lentError!);

    const late: PoolClient = await queued;
    const lateError = await late.query("insert into shutdown_probe values ('late')").then(() => null, (error: Error) => error);
    expect(lateError?.message).toBe('Client was closed and is not queryable');
    late.release(lateError!);

    expect(await notes()).toEqual([]);
    await endPool(pool);
  });

  // pg read the URL's query_timeout ('0', a string) as a timeout of its own and failed the terminate at once.
  it('ends them with a DATABASE_URL that carries a query_timeout', async () => {
    const url = new URL(database.url);
    url.searchParams.set('query_timeout', '0');
    const pool = createPool(url.toString(), 1);
    const sessions = new InFlightSessions(pool, url.toString());
    const lent = await pool.connect();
    await lent.query('select 1');
    expect(await sessions.end()).toBe(1);
    lent.release(new Error('ended'));
    await endPool(pool);
  });

  it('leaves sessions alone until it is told to end them', async () => {
    const pool = createPool(database.url, 1);
    new InFlightSessions(pool, database.url);
    await pool.query("insert into shutdown_probe values ('before')");
    expect(await notes()).toEqual(['before']);
    await admin.query('truncate shutdown_probe');
    await endPool(pool);
  });
});

describe('InFlightSessions with a server that stops answering', () => {
  let owned: OwnedPostgres;
  let server: PostgresProcess;

  beforeAll(async () => {
    owned = await ownPostgres('tracing-in-flight-pg-');
    server = await owned.start();
  }, 90_000);

  afterAll(async () => {
    await server?.stop();
    await owned?.remove();
  });

  it(`gives up after ${END_SESSIONS_TIMEOUT_MS} ms instead of holding shutdown`, async () => {
    const pool = createPool(server.url, 1);
    const sessions = new InFlightSessions(pool, server.url);
    const lent = await pool.connect();
    server.freeze();
    try {
      const started = Date.now();
      const outcome = await sessions.end().then((n) => `ended ${n}`, (error: Error) => error.message);
      const took = Date.now() - started;
      expect(outcome).toBe(`Postgres did not answer within ${END_SESSIONS_TIMEOUT_MS} ms`);
      expect(took).toBeGreaterThanOrEqual(END_SESSIONS_TIMEOUT_MS - 100);
      expect(took).toBeLessThan(END_SESSIONS_TIMEOUT_MS + 2_000);
    } finally {
      server.thaw();
    }
    lent.release(true);
    await endPool(pool);
  }, 30_000);
});
