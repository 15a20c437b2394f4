import { Client, Pool } from 'pg';
import request from 'supertest';
import { PG_POOL } from '../../src/dbs/postgres/postgres.tokens';
import { createTestApp, TestApp } from '../support/app';
import { makeSpan } from '../support/fixtures';
import { setAppSessionDefaults } from '../support/postgres';

/**
 * A request whose statement Postgres holds (here: behind a lock) and then
 * fails: the server cancels it (statement_timeout), ends its connection (a
 * restart, a failover, pg_terminate_backend), or rolls it back to break a
 * deadlock. Each way the caller gets a 503, nothing the request started is
 * committed, and the API goes on serving.
 */

/** Locks the spans table from a connection of its own until `release`; the API's writes to it wait. */
async function lockSpans(databaseUrl: string): Promise<{ locker: Client; release(): Promise<void> }> {
  const locker = new Client({ connectionString: databaseUrl });
  await locker.connect();
  await locker.query('begin');
  await locker.query('lock table spans in access exclusive mode');
  return {
    locker,
    release: async () => {
      await locker.query('rollback');
      await locker.end();
    },
  };
}

/** Returns once a statement of this database waits on a lock. */
async function untilWaitingOnLock(locker: Client): Promise<void> {
  const waiting = async () =>
    (await locker.query(`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`)).rows[0].n;
  for (let i = 0; (await waiting()) === 0; i++) {
    if (i > 200) throw new Error('no statement waited on the lock');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Creates a span, then tries to rename it while the table is locked, running `whileHeld` meanwhile. */
async function renameWhileLocked(t: TestApp, whileHeld: (locker: Client) => Promise<void>) {
  const auth = { Authorization: `ApiKey ${t.apiKey}` };
  const span = makeSpan();
  await request(t.url).post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);
  const lock = await lockSpans(t.database.url);
  let res: request.Response;
  try {
    const rename = request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).then((r) => r);
    await whileHeld(lock.locker);
    res = await rename;
  } finally {
    await lock.release();
  }
  const read = await request(t.url).get(`/tracing/spans/${span.trace_id}/${span.span_id}`).set(auth).expect(200);
  // Works again, and the refused rename was not committed.
  await request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'changed' }] }).expect(200);
  return { res, storedName: read.body.span.span_name as string, originalName: span.span_name };
}

describe('Postgres statement timeout', () => {
  let t: TestApp;
  beforeAll(async () => (t = await createTestApp({ DB_STATEMENT_TIMEOUT_MS: '300' })));
  afterAll(async () => t.close());

  it('answers 503 while a lock holds the table, writes nothing, and works again once it is released', async () => {
    const { res, storedName, originalName } = await renameWhileLocked(t, async () => undefined);
    expect(res.status).toBe(503);
    expect(res.body.message).toMatch(/^the database did not finish this request within its statement timeout \(DB_STATEMENT_TIMEOUT_MS\)/);
    expect(storedName).toBe(originalName);
  });
});

describe('Postgres ending the connection under a request', () => {
  let t: TestApp;
  // The default statement timeout (30 s): the connection ends long before it could fire.
  beforeAll(async () => (t = await createTestApp()));
  afterAll(async () => t.close());

  // pg reports the lost connection as an 'error' event on a client the pool does not watch while it is
  // lent out; without a listener of ours (createPool) it crashed the process.
  it('answers 503, commits none of it, and the same process goes on serving', async () => {
    const { res, storedName, originalName } = await renameWhileLocked(t, async (locker) => {
      await untilWaitingOnLock(locker);
      const ended = await locker.query(`select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
      expect(ended.rows[0].n).toBeGreaterThanOrEqual(1);
    });
    expect(res.status).toBe(503);
    expect(res.body.message).toMatch(/database is unavailable/);
    expect(storedName).toBe(originalName);
  });
});

describe('Postgres breaking a deadlock by rolling the request back', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await createTestApp();
    // Postgres looks for a cycle once, deadlock_timeout after a session starts waiting. The API's sessions
    // look after 3 s, the other session here after 60 s: the test closes the cycle well within the first,
    // so the API's transaction is the one rolled back however slow the machine.
    await setAppSessionDefaults(t.database, t.app.get<Pool>(PG_POOL), { deadlock_timeout: '3s' });
  });
  afterAll(async () => t.close());

  // Writes lock in key order, so two requests cannot deadlock each other; another client still can.
  it('answers 503 naming the conflict, commits none of it, and the retry succeeds', async () => {
    const auth = { Authorization: `ApiKey ${t.apiKey}` };
    const traceId = '5'.repeat(32);
    const [first, second] = [makeSpan({ trace_id: traceId, span_id: '1'.repeat(16) }), makeSpan({ trace_id: traceId, span_id: '2'.repeat(16) })];
    await request(t.url).post('/tracing/spans').set(auth).send({ spans: [first, second] }).expect(201);

    const other = new Client({ connectionString: t.database.url });
    await other.connect();
    let res: request.Response;
    try {
      await other.query(`set deadlock_timeout = '60s'`);
      await other.query('begin');
      const lockRow = (spanId: string) =>
        other.query(`select 1 from spans where trace_id = $1 and span_id = decode($2, 'hex') for update`, [traceId, spanId]);
      await lockRow(second.span_id);
      // The PUT locks the first span, then waits for the second; locking the first here closes the cycle.
      const rename = request(t.url).put('/tracing/spans').set(auth).send({ spans: [second, first].map((s) => ({ ...s, span_name: 'changed' })) }).then((r) => r);
      await untilWaitingOnLock(other);
      const closeCycle = lockRow(first.span_id);
      res = await rename;
      await closeCycle;
    } finally {
      await other.query('rollback').catch(() => undefined);
      await other.end();
    }
    expect(res.status).toBe(503);
    expect(res.body.message).toMatch(/rolled back in a conflict with a concurrent one; retry/);
    const stored = await request(t.url).get(`/tracing/traces/${traceId}`).set(auth).expect(200);
    expect(stored.body.spans.map((s: { span_name: string }) => s.span_name)).toEqual([first.span_name, second.span_name]);
    await request(t.url).put('/tracing/spans').set(auth).send({ spans: [second, first].map((s) => ({ ...s, span_name: 'changed' })) }).expect(200);
  });
});
