import { sql } from 'kysely';
import { Client, Pool } from 'pg';
import { createKysely, createPool, endPool, withoutUrlOptions } from '../../src/dbs/postgres/postgres-pool';
import { parseConfig } from '../../src/config/app-config';
import { openPostgres } from '../../scripts/cli/postgres-cli';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * Ending the API's pool before the embedded Postgres is stopped: every
 * session must be gone by then, or the server ends it and the API logs a
 * false "connection lost: terminating connection due to administrator
 * command" (it did at every shutdown after a /health).
 */
describe('endPool', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase();
  });

  afterAll(async () => {
    await database?.drop();
  });

  async function liveSessions(pids: number[]): Promise<number[]> {
    const admin = new Client({ connectionString: database.url });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ pid: number }>('select pid from pg_stat_activity where pid = any($1::int[])', [pids]);
      return rows.map((row) => row.pid);
    } finally {
      await admin.end();
    }
  }

  function sessionsOf(pool: Pool): number[] {
    const pids: number[] = [];
    pool.on('connect', (client) => pids.push((client as unknown as { processID: number }).processID));
    return pids;
  }

  it('ends sessions opened on the pool itself, as /health does, not only through Kysely', async () => {
    const lost: Error[] = [];
    const pool = createPool(database.url, 4, { onConnectionLost: (error) => lost.push(error) });
    const pids = sessionsOf(pool);
    await Promise.all([1, 2, 3].map(() => pool.query('select pg_sleep(0.05)')));
    expect(pids).toHaveLength(3);

    await endPool(pool);

    expect(await liveSessions(pids)).toEqual([]);
    expect(lost).toEqual([]);
  });

  it('ends sessions opened through Kysely', async () => {
    const pool = createPool(database.url, 4);
    const pids = sessionsOf(pool);
    const db = createKysely(pool);
    await Promise.all([1, 2].map(() => sql`select pg_sleep(0.05)`.execute(db)));

    await endPool(pool);

    expect(pids).toHaveLength(2);
    expect(await liveSessions(pids)).toEqual([]);
  });

  it('waits for a session lent out when it was called, until it is released and closed', async () => {
    const pool = createPool(database.url, 2);
    const pids = sessionsOf(pool);
    const running = pool.query('select pg_sleep(0.3)');
    await new Promise((done) => setTimeout(done, 100));

    const ended = endPool(pool).then(() => liveSessions(pids));
    await running;

    expect(pids).toHaveLength(1);
    expect(await ended).toEqual([]);
  });

  it('stops waiting for a session that is never given back (a request stuck on a lock) after its bound', async () => {
    const pool = createPool(database.url, 2);
    const held = await pool.connect();
    const started = Date.now();
    await endPool(pool);
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(1_900);
    expect(waited).toBeLessThan(4_000);
    held.release();
  });

  it('resolves at once for a pool that never connected', async () => {
    const pool = createPool(database.url, 2);
    const started = Date.now();
    await endPool(pool);
    // Not the 2 s it waits for a lent-out connection; room for a loaded machine besides.
    expect(Date.now() - started).toBeLessThan(1_500);
  });
});

// pg lets the URL's settings replace the pool's whole: `?options=-c search_path=...` (README's advice for a
// schema that is not first) took the pool's TimeZone, DateStyle and statement_timeout with it.
describe('createPool with settings in the URL', () => {
  let database: TestDatabase;
  beforeAll(async () => (database = await createTestDatabase()));
  afterAll(async () => database?.drop());

  it("keeps the URL's options beside its own, its own winning, and its own application_name", async () => {
    const url = new URL(database.url);
    url.searchParams.set('options', '-c search_path=elsewhere,public -c statement_timeout=0 -c TimeZone=Asia/Tokyo');
    url.searchParams.set('application_name', 'from the url');
    // pg sends these as startup parameters of their own, which Postgres applied after every -c of the options.
    url.searchParams.set('statement_timeout', '999');
    url.searchParams.set('lock_timeout', '777');
    const pool = createPool(url.toString(), 1, { statementTimeoutMs: 1234 });
    try {
      const { rows } = await pool.query<Record<string, string>>(
        `select current_setting('search_path') as search_path, current_setting('statement_timeout') as statement_timeout,
                current_setting('lock_timeout') as lock_timeout,
                current_setting('TimeZone') as timezone, current_setting('DateStyle') as datestyle, current_setting('application_name') as app`,
      );
      expect(rows[0]).toEqual({ search_path: 'elsewhere,public', statement_timeout: '1234ms', lock_timeout: '777ms', timezone: 'UTC', datestyle: 'ISO, MDY', app: `tracing-api pid ${process.pid}` });
    } finally {
      await endPool(pool);
    }
  });

  // '?query_timeout=0' reached pg as the string '0' and failed every query at once; an empty statement_timeout,
  // which pg ignored, would have refused every connection once sent as a setting.
  it('takes no query_timeout from the URL, and ignores an empty setting as pg did', async () => {
    const url = new URL(database.url);
    url.searchParams.set('query_timeout', '0');
    url.searchParams.set('statement_timeout', '');
    const pool = createPool(url.toString(), 1, { statementTimeoutMs: 4321 });
    try {
      const { rows } = await pool.query<{ timeout: string }>(`select current_setting('statement_timeout') as timeout`);
      expect(rows[0].timeout).toBe('4321ms');
    } finally {
      await endPool(pool);
    }
  });

  // The operator commands' long scans (backfill's count of a scope, verify's group-by over history) were
  // cancelled by a statement_timeout the role or DATABASE_URL set: 0 turns it off, unset leaves it.
  it("turns the statement timeout off with 0, the URL's or the role's included, and leaves it unset otherwise", async () => {
    const url = new URL(database.url);
    url.searchParams.set('statement_timeout', '1500');
    for (const [statementTimeoutMs, expected] of [
      [0, '0'],
      [undefined, '1500ms'],
    ] as const) {
      const pool = createPool(url.toString(), 1, { statementTimeoutMs });
      try {
        const { rows } = await pool.query<{ timeout: string }>(`select current_setting('statement_timeout') as timeout`);
        expect({ statementTimeoutMs, timeout: rows[0].timeout }).toEqual({ statementTimeoutMs, timeout: expected });
      } finally {
        await endPool(pool);
      }
    }
  });

  it("gives the operator commands' connections no statement timeout, whatever DATABASE_URL sets", async () => {
    const url = new URL(database.url);
    url.searchParams.set('options', '-c statement_timeout=1500');
    const postgres = await openPostgres(parseConfig({ DATABASE_URL: url.toString() }), () => undefined, 1);
    try {
      const { rows } = await sql<{ timeout: string }>`select current_setting('statement_timeout') as timeout`.execute(postgres.db);
      expect(rows[0].timeout).toBe('0');
    } finally {
      await postgres.close();
    }
  });

  it('leaves the URL\'s other parameters as they were written, and escapes what Postgres would split options at', () => {
    const url = 'postgres://u:50%25off@h/db?host=/var/run/pg&sslmode=require&statement_timeout=5%09s&options=-c%20search_path%3Da&application_name=x#f';
    expect(withoutUrlOptions(url)).toEqual({
      connectionString: 'postgres://u:50%25off@h/db?host=/var/run/pg&sslmode=require#f',
      urlOptions: '-c search_path=a -c statement_timeout=5\\\ts',
    });
    expect(withoutUrlOptions('postgres://h/db?sslmode=require')).toEqual({ connectionString: 'postgres://h/db?sslmode=require', urlOptions: undefined });
    // A stray '%' keeps the rest decoded, as URLSearchParams reads it; a '?' in the fragment starts no query.
    expect(withoutUrlOptions('postgres://h/db?options=-c+search_path%3D50%').urlOptions).toBe('-c search_path=50%');
    expect(withoutUrlOptions('postgres://h/db#x?options=-c%20x=1')).toEqual({ connectionString: 'postgres://h/db#x?options=-c%20x=1', urlOptions: undefined });
  });
});
