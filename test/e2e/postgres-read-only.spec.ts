import { Pool } from 'pg';
import request from 'supertest';
import { PG_POOL } from '../../src/dbs/postgres/postgres.tokens';
import { createTestApp, TestApp } from '../support/app';
import { makeNode, makeSpan } from '../support/fixtures';
import { setAppSessionDefaults } from '../support/postgres';

/**
 * A Postgres that serves reads but refuses writes: the API landed on a standby
 * after a failover (before DNS moved), or an operator made the database
 * read-only for maintenance. Writes are 503s that write nothing (retry later,
 * not a fault of the request), reads go on, and writes work again once the
 * database takes them.
 */
describe('Postgres refusing writes (read-only)', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp()));
  afterAll(async () => t.close());

  const setReadOnly = (readOnly: boolean) =>
    setAppSessionDefaults(t.database, t.app.get<Pool>(PG_POOL), { default_transaction_read_only: readOnly ? 'on' : 'off' });

  /** /health's postgres entry. The probe's kept connection was ended with the others: its first probe after may fail. */
  const healthOfPostgres = async () => {
    for (let attempt = 0; ; attempt++) {
      const res = await request(t.url).get('/health');
      if (res.status === 200 || attempt === 2) return { status: res.status, postgres: (res.body.info ?? res.body.error)?.postgres };
    }
  };

  it('answers writes 503 and writes nothing, serves reads, and takes writes again afterwards', async () => {
    const auth = { Authorization: `ApiKey ${t.apiKey}` };
    const stored = makeSpan();
    await request(t.url).post('/tracing/spans').set(auth).send({ spans: [stored] }).expect(201);
    await setReadOnly(true);
    try {
      const refused = makeSpan();
      const refusedNode = makeNode();
      const writes = [
        await request(t.url).post('/tracing/spans').set(auth).send({ spans: [refused] }),
        await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...stored, span_name: 'changed' }] }),
        await request(t.url).delete(`/tracing/traces/${stored.trace_id}`).set(auth),
        await request(t.url).post('/observability/nodes').set(auth).send({ nodes: [refusedNode] }),
      ];
      for (const res of writes) {
        expect({ status: res.status, message: res.body.message }).toEqual({ status: 503, message: expect.stringMatching(/database is read-only and took no write; retry later/) });
      }
      const read = await request(t.url).get(`/tracing/spans/${stored.trace_id}/${stored.span_id}`).set(auth).expect(200);
      expect(read.body.span.span_name).toBe(stored.span_name);
      // Nothing written: the refused span and node are not there, the stored span neither changed nor deleted.
      await request(t.url).get(`/tracing/traces/${refused.trace_id}`).set(auth).expect(404);
      await request(t.url).get(`/observability/trees/${refusedNode.tree_id}`).set(auth).expect(404);
      // /health stays 200 (reads go on) and says writes are refused, for whoever watches it.
      const health = await healthOfPostgres();
      expect(health).toMatchObject({ status: 200, postgres: { status: 'up', writable: false, message: expect.stringMatching(/^Postgres refuses writes/) } });
    } finally {
      await setReadOnly(false);
    }
    await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...stored, span_name: 'changed' }] }).expect(200);
    const health = await healthOfPostgres();
    expect(health).toMatchObject({ status: 200, postgres: { status: 'up', writable: true } });
    expect(health.postgres).not.toHaveProperty('message');
  });
});
