import { INestApplication } from '@nestjs/common';
import { sql } from 'kysely';
import { AddressInfo } from 'node:net';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { createApp } from '../../src/bootstrap';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { Registry } from 'prom-client';
import { SHUTDOWN_GAP_RECORDING_MS } from '../../src/dbs/clickhouse/batch-writer';
import { METRICS_REGISTRY } from '../../src/metrics/metrics.tokens';
import { TracingService } from '../../src/tracing/tracing.service';
import { eventually } from '../support/fake-clickhouse';
import { freePort } from '../../scripts/cli/free-port';
import { makeNode, makeSpan } from '../support/fixtures';
import { OwnedPostgres, ownPostgres, PostgresProcess } from '../support/postgres-process';
import { closeRawAgent, rawRequest, RawResponse } from '../support/raw-http';

/**
 * Postgres stops answering under a running API (its processes stopped, as a
 * hung host or a path that drops packets would leave it) and later goes on.
 * No connection is refused and no statement timeout can fire, so only the
 * API's client timeout stands between callers and a hang. Every request must
 * answer 503 within it (or within the connect timeout, for a request that
 * needs a new connection), /health must say Postgres is down, nothing the
 * API refused may be committed once the server goes on, and the same process
 * must serve again.
 *
 * This spec owns its Postgres server (the run's shared one cannot be frozen).
 */

const STATEMENT_TIMEOUT_MS = 300;
const PROJECT = '7d1e0e3c-0000-4000-8000-0000000000cd';
const CLIENT_TIMEOUT_MS = 1_500;
/** The pool's connectionTimeoutMillis (src/dbs/postgres/postgres-pool.ts). */
const CONNECT_TIMEOUT_MS = 5_000;
/** A request may wait for a client to be given up, then for a connect that cannot complete; plus slack for a loaded machine. */
const ANSWER_BOUND_MS = CLIENT_TIMEOUT_MS + CONNECT_TIMEOUT_MS + 3_000;

describe('Postgres that stops answering', () => {
  let owned: OwnedPostgres;
  let postgres: PostgresProcess;
  let app: INestApplication;
  let url: string;
  let auth: Record<string, string>;

  const send = (method: string, path: string, body?: unknown, headers = auth) =>
    rawRequest(url, method, path, body === undefined ? undefined : JSON.stringify(body), headers, ANSWER_BOUND_MS + 10_000);

  async function timed(request: () => Promise<RawResponse>): Promise<{ res: RawResponse; took: number }> {
    const started = Date.now();
    const res = await request();
    return { res, took: Date.now() - started };
  }

  function expectUnavailable({ res, took }: { res: RawResponse; took: number }): void {
    expect({ status: res.status, body: res.json }).toMatchObject({ status: 503, body: { message: expect.stringMatching(/database is unavailable/) } });
    expect(took).toBeLessThan(ANSWER_BOUND_MS);
  }

  beforeAll(async () => {
    owned = await ownPostgres('tracing-frozen-pg-');
    postgres = await owned.start();
    app = await createApp({
      DATABASE_URL: postgres.url,
      LOG_LEVEL: 'silent',
      USE_CLICKHOUSE: 'false',
      MIGRATE_ON_START: 'true',
      DB_POOL_MAX: '4',
      DB_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      DB_CLIENT_TIMEOUT_MS: String(CLIENT_TIMEOUT_MS),
    });
    await app.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    auth = { Authorization: `ApiKey ${(await app.get(ApiKeyService).create('7d1e0e3c-0000-4000-8000-0000000000cc')).key}`, 'Content-Type': 'application/json' };
  }, 120_000);

  afterAll(async () => {
    closeRawAgent();
    postgres?.thaw();
    await app?.close();
    await postgres?.stop();
    await owned?.remove();
  }, 60_000);

  /** A second API on the same Postgres with the mirror on and ClickHouse down (a closed port): its rows stay queued. */
  const mirroredApp = async (env: Record<string, string>) =>
    createApp({
      DATABASE_URL: postgres.url,
      LOG_LEVEL: 'silent',
      USE_CLICKHOUSE: 'true',
      CLICKHOUSE_URL: `http://127.0.0.1:${await freePort()}`,
      MIGRATE_ON_START: 'false',
      DB_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS),
      ...env,
    });

  it('answers 503 within its client timeout, commits nothing it refused, and serves again once Postgres goes on', async () => {
    const kept = makeSpan();
    const renamed = makeSpan();
    expect((await send('POST', '/tracing/spans', { spans: [kept, renamed] })).status).toBe(201);
    // The pool now holds an idle connection, so the first request below sends its statement to the frozen server.
    expect((await send('GET', `/tracing/traces/${kept.trace_id}`)).status).toBe(200);
    // So does /health's probe, which keeps its one connection.
    expect((await send('GET', '/health', undefined, {})).status).toBe(200);

    postgres.freeze();
    try {
      // On a connection the pool already had: only the client timeout can answer it.
      const deleted = await timed(() => send('DELETE', `/tracing/traces/${kept.trace_id}`));
      expectUnavailable(deleted);
      expect(deleted.took).toBeGreaterThanOrEqual(CLIENT_TIMEOUT_MS - 50);

      const during = makeSpan();
      const answers = await Promise.all([
        timed(() => send('PUT', '/tracing/spans', { spans: [{ ...renamed, span_name: 'renamed while frozen' }] })),
        timed(() => send('POST', '/tracing/spans', { spans: [during] })),
        timed(() => send('POST', '/observability/nodes', { nodes: [makeNode()] })),
        timed(() => send('GET', `/tracing/traces/${renamed.trace_id}`)),
        timed(() => send('POST', '/tracing/spans/query', {})),
      ]);
      answers.forEach(expectUnavailable);

      // Operators see it: each given-up connection is counted.
      const metrics = await send('GET', '/metrics', undefined, {});
      const abandoned = Number(/^postgres_connections_abandoned_total\{pool="request"\} (\d+)$/m.exec(metrics.text)?.[1]);
      expect(abandoned).toBeGreaterThanOrEqual(1);

      const health = await timed(() => send('GET', '/health', undefined, {}));
      expect(health.took).toBeLessThan(ANSWER_BOUND_MS);
      expect(health.res.status).toBe(503);
      expect((health.res.json as { error: { postgres: { message: string } } }).error.postgres.message).toMatch(/^Postgres is unavailable: /);
      // The probe's own connection is given up too, once its client timeout (half a second after /health's) has passed.
      await eventually(
        "the probe's given-up connection to be counted",
        async () => /^postgres_connections_abandoned_total\{pool="probe"\} [1-9]\d*$/m.test((await send('GET', '/metrics', undefined, {})).text),
        5_000,
        100,
      );

      postgres.thaw();

      // The same process: once the server answers again, given-up connections are gone from the pool.
      const after = makeSpan();
      await eventually('a write to succeed once Postgres answers again', async () => (await send('POST', '/tracing/spans', { spans: [after] })).status === 201, 30_000, 250);
      expect((await send('GET', '/health', undefined, {})).status).toBe(200);

      // What the refused requests had sent was waiting in the server's socket buffers when it went on: none of it was committed.
      const trace = await send('GET', `/tracing/traces/${kept.trace_id}`);
      expect(trace.status).toBe(200);
      expect((await send('GET', `/tracing/traces/${during.trace_id}`)).status).toBe(404);
      const read = await send('GET', `/tracing/spans/${renamed.trace_id}/${renamed.span_id}`);
      expect((read.json as { span: { span_name: string } }).span.span_name).toBe(renamed.span_name);
    } finally {
      postgres.thaw();
    }
  }, 120_000);

  it('never lends out again a connection it gave up on in the middle of a transaction', async () => {
    // One connection, so the next transaction would run on the given-up one if the pool kept it.
    const pool = createPool(postgres.url, 1, { statementTimeoutMs: STATEMENT_TIMEOUT_MS, clientTimeoutMs: CLIENT_TIMEOUT_MS });
    const db = createKysely(pool);
    try {
      await sql`create table frozen_probe (id int primary key, label text not null)`.execute(db);
      await sql`insert into frozen_probe values (1, 'before')`.execute(db);

      const refused = db.transaction().execute(async (trx) => {
        await sql`select 1`.execute(trx);
        postgres.freeze();
        await sql`update frozen_probe set label = 'refused' where id = 1`.execute(trx);
      });
      await expect(refused).rejects.toThrow(/Query read timeout|Client was closed/);
      postgres.thaw();

      // A later transaction commits. Had the pool lent out the given-up connection, the refused UPDATE
      // (run once the server went on) would sit in its open transaction and be committed with this one.
      await eventually('a transaction to commit once Postgres answers again', async () => {
        try {
          await db.transaction().execute((trx) => sql`select 1`.execute(trx));
          return true;
        } catch {
          return false;
        }
      }, 30_000, 250);
      const { rows } = await sql<{ label: string }>`select label from frozen_probe where id = 1`.execute(db);
      expect(rows).toEqual([{ label: 'before' }]);
    } finally {
      postgres.thaw();
      await db.destroy();
    }
  }, 60_000);

  it('shuts down within the mirror deadline and its gap recording bound when Postgres stops answering; the rows it could not record are counted lost', async () => {
    // ClickHouse down, so the writes stay queued and become gap records at the deadline. Each try of a record
    // then waits out the mirror pool's connect timeout (5 s, a new connection) or, on a connection it holds,
    // its client timeout (30 s here): three tries took 17.7 s before the bound.
    const mirrorDeadlineMs = 500;
    const mirrored = await mirroredApp({ DB_CLIENT_TIMEOUT_MS: '30000', MIRROR_SHUTDOWN_DEADLINE_MS: String(mirrorDeadlineMs) });
    let closed = false;
    try {
      const tracing = mirrored.get(TracingService);
      await tracing.createSpans(PROJECT, [makeSpan(), makeSpan(), makeSpan()]);
      const registry = mirrored.get<Registry>(METRICS_REGISTRY);
      const lost = async () => (await registry.getSingleMetric('mirror_rows_lost_total')!.get()).values.reduce((n, v) => n + v.value, 0);
      expect(await lost()).toBe(0);

      postgres.freeze();
      const started = Date.now();
      await mirrored.close();
      closed = true;
      const took = Date.now() - started;
      // Deadline, then the gap records' bound, then the pools' close (END_POOL_WAIT_MS); not the 30 s client timeout.
      expect(took).toBeGreaterThanOrEqual(mirrorDeadlineMs + SHUTDOWN_GAP_RECORDING_MS - 50);
      expect(took).toBeLessThan(mirrorDeadlineMs + SHUTDOWN_GAP_RECORDING_MS + 2_000 + 4_000);
      expect(await lost()).toBe(3);
    } finally {
      postgres.thaw();
      if (!closed) await mirrored.close();
    }
  }, 60_000);

  it('counts a mirrored write given up mid-transaction, whose commit it cannot know, for verify --repair', async () => {
    // The create's row waits in the queue, ClickHouse being down: close() need not wait 10 s for it.
    const mirrored = await mirroredApp({ DB_CLIENT_TIMEOUT_MS: String(CLIENT_TIMEOUT_MS), MIRROR_SHUTDOWN_DEADLINE_MS: '500' });
    try {
      const tracing = mirrored.get(TracingService);
      const span = makeSpan();
      await tracing.createSpans(PROJECT, [span]);
      const registry = mirrored.get<Registry>(METRICS_REGISTRY);
      const unknown = async (entity: string) =>
        (await registry.getSingleMetric('mirror_writes_outcome_unknown_total')!.get()).values.find((v) => v.labels.entity === entity)?.value;
      expect(await unknown('spans')).toBe(0);

      postgres.freeze();
      try {
        // On the connection the create used: sent, then given up after the client timeout.
        await expect(tracing.updateSpans(PROJECT, [{ ...span, span_name: 'renamed while frozen' }])).rejects.toThrow(/Query read timeout|Connection terminated/);
      } finally {
        postgres.thaw();
      }
      expect({ spans: await unknown('spans'), nodes: await unknown('nodes') }).toEqual({ spans: 1, nodes: 0 });
    } finally {
      await mirrored.close();
    }
  }, 60_000);

  it('lets the pool close while Postgres is frozen, so shutdown waits at most the client timeout', async () => {
    // What the API's shutdown does last (PostgresModule: db.destroy()), with a request's statement stuck.
    const pool = createPool(postgres.url, 2, { statementTimeoutMs: STATEMENT_TIMEOUT_MS, clientTimeoutMs: CLIENT_TIMEOUT_MS });
    const db = createKysely(pool);
    await sql`select 1`.execute(db);
    postgres.freeze();
    try {
      const stuck = sql`select 1`.execute(db).then(
        () => 'answered',
        (error: Error) => error.message,
      );
      await new Promise((resolve) => setTimeout(resolve, 100));
      const started = Date.now();
      await db.destroy();
      expect(Date.now() - started).toBeLessThan(CLIENT_TIMEOUT_MS + 2_000);
      expect(await stuck).toBe('Query read timeout');
    } finally {
      postgres.thaw();
    }
  }, 60_000);
});
