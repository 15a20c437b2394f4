import { Client } from 'pg';
import request from 'supertest';
import { createTestApp, TestApp } from '../support/app';
import { makeSpan } from '../support/fixtures';

/**
 * Postgres ends connections the API is using (a restart, a failover,
 * pg_terminate_backend) while requests are in flight. Those requests get a
 * 503, nothing they started is committed, and the API process goes on
 * serving: pg reports the lost connection as an 'error' event on a client the
 * pool is not watching while it is lent out, which would crash the process
 * without a listener of ours.
 */
describe('Postgres ending connections under running requests', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp()));
  afterAll(async () => t.close());

  it('answers 503 for the requests whose connection ended, commits none of it, and goes on serving', async () => {
    const auth = { Authorization: `ApiKey ${t.apiKey}` };
    const span = makeSpan();
    await request(t.url).post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);

    const locker = new Client({ connectionString: t.database.url });
    await locker.connect();
    try {
      // Hold the table so the update waits inside its transaction, on a connection the API holds.
      await locker.query('begin');
      await locker.query('lock table spans in access exclusive mode');
      const update = request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).then((res) => res);
      const waiting = async () =>
        (await locker.query(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()`)).rows[0].n;
      for (let i = 0; (await waiting()) === 0; i++) {
        if (i > 100) throw new Error('the update never waited on the lock');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // Every other connection to this spec's database: the API's busy and idle ones.
      const ended = await locker.query(`select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
      expect(ended.rows[0].n).toBeGreaterThanOrEqual(1);
      const res = await update;
      expect(res.status).toBe(503);
      expect(res.body.message).toMatch(/database is unavailable/);
      await locker.query('rollback');
    } finally {
      await locker.end();
    }

    // The same process answers, from new connections, and the update was not committed.
    const read = await request(t.url).get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).expect(200);
    expect(read.body.span.span_name).toBe(span.span_name);
    await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).expect(200);
  });
});
