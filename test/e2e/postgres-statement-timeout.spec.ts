import { Client } from 'pg';
import request from 'supertest';
import { createTestApp, TestApp } from '../support/app';
import { makeSpan } from '../support/fixtures';

/**
 * A statement stuck behind a lock (or an overloaded server) is cancelled by
 * Postgres after DB_STATEMENT_TIMEOUT_MS: the caller gets a 503 instead of a
 * request that hangs, and the write is rolled back.
 */
describe('Postgres statement timeout', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp({ DB_STATEMENT_TIMEOUT_MS: '300' })));
  afterAll(async () => t.close());

  it('answers 503 while a lock holds the table, writes nothing, and works again once it is released', async () => {
    const auth = { Authorization: `ApiKey ${t.apiKey}` };
    const span = makeSpan();
    await request(t.url).post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);

    const locker = new Client({ connectionString: t.database.url });
    await locker.connect();
    try {
      await locker.query('begin');
      await locker.query('lock table spans in access exclusive mode');
      const res = await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).expect(503);
      expect(res.body.message).toMatch(/database is unavailable/);
      await locker.query('rollback');
    } finally {
      await locker.end();
    }

    const read = await request(t.url).get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).expect(200);
    expect(read.body.span.span_name).toBe(span.span_name);
    await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).expect(200);
  });
});
