import { Pool, PoolClient } from 'pg';
import request from 'supertest';
import { PG_POOL } from '../../src/dbs/postgres/postgres.tokens';
import { PROBE_TIMEOUT_MS } from '../../src/dbs/postgres/postgres-probe';
import { createTestApp, TestApp } from '../support/app';

/**
 * /health is what a readiness probe takes the API out of service by (and,
 * wrongly pointed, a liveness probe restarts it by): it must say Postgres
 * is up while the database answers, however busy the API's own request pool
 * is, and answer within its probe timeout while that pool is exhausted or
 * the mirror's gap count cannot be read.
 */
describe('GET /health while the database is busy', () => {
  let t: TestApp;
  let held: PoolClient[] = [];

  beforeAll(async () => {
    t = await createTestApp({ DB_POOL_MAX: '2' }, { clickhouse: true });
  });
  afterAll(async () => {
    for (const client of held.splice(0)) client.release();
    await t.close();
  });

  it('reports Postgres up, with the request pool saturated, within the probe timeout', async () => {
    const pool = t.app.get<Pool>(PG_POOL);
    held = [await pool.connect(), await pool.connect()];
    // A request waiting for a connection, as one would behind long queries.
    const waiting = pool.connect().then((client) => held.push(client), () => undefined);

    const started = Date.now();
    const res = await request(t.url).get('/health').expect(200);
    const took = Date.now() - started;

    expect(res.body.info.postgres).toEqual({ status: 'up', writable: true, requestPool: { connections: 2, idle: 0, waiting: 1 } });
    // The mirror's open-gap count comes from the mirror's own pool, which requests cannot exhaust.
    expect(res.body.info.mirror).toMatchObject({ status: 'up', enabled: true, openGaps: 0 });
    expect(took).toBeLessThan(PROBE_TIMEOUT_MS + 1_500);

    for (const client of held.splice(0)) client.release();
    await waiting; // it was lent one of them: give that back too
    for (const client of held.splice(0)) client.release();
    const after = await request(t.url).get('/health').expect(200);
    expect(after.body.info.postgres.requestPool).toMatchObject({ idle: 2, waiting: 0 });
  });

  it('answers within its bound with openGaps null when the gap count cannot be read in time, and stays 200', async () => {
    // Another session holds the gap table locked, as a long migration or a stuck vacuum might: the count waits.
    const locker = await t.database.pool.connect();
    try {
      await locker.query('begin');
      await locker.query('lock table mirror_gaps in access exclusive mode');
      const started = Date.now();
      const res = await request(t.url).get('/health').expect(200);
      const took = Date.now() - started;
      expect(res.body.info.mirror).toMatchObject({ status: 'up', enabled: true, openGaps: null });
      expect(took).toBeGreaterThanOrEqual(PROBE_TIMEOUT_MS - 100);
      expect(took).toBeLessThan(PROBE_TIMEOUT_MS + 1_500);

      // The count /health gave up on still waits, on the mirror's pool of three that gap records need: probes
      // that come meanwhile, together or after, share it rather than fill the pool.
      const again = await Promise.all([1, 2, 3].map(() => request(t.url).get('/health').expect(200)));
      expect(again.map((r) => r.body.info.mirror.openGaps)).toEqual([null, null, null]);
      // Watched from a session of its own: inside a transaction pg_stat_activity keeps its first reading.
      const counts = await t.database.pool.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where state = 'active' and query ilike '%from \"mirror_gaps\"%' and pid <> pg_backend_pid()",
      );
      expect(counts.rows[0].n).toBe(1);
    } finally {
      await locker.query('rollback');
      locker.release();
    }
    const after = await request(t.url).get('/health').expect(200);
    expect(after.body.info.mirror.openGaps).toBe(0);
  });
});
