import { INestApplication } from '@nestjs/common';
import { AddressInfo } from 'node:net';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { createApp } from '../../src/bootstrap';
import { eventually } from '../support/fake-clickhouse';
import { makeSpan, makeNode } from '../support/fixtures';
import { OwnedPostgres, ownPostgres, PostgresProcess } from '../support/postgres-process';
import { closeRawAgent, rawRequest, RawResponse } from '../support/raw-http';

/**
 * Postgres goes away under a running API and comes back. The API must answer
 * 503 with a clear message (never a 500, never a hang), /health must say
 * Postgres is down and why, nothing may be half-written, and once Postgres
 * is back the same process serves writes again without a restart.
 *
 * This spec owns its Postgres server (the run's shared one cannot be stopped).
 */

/** The pool's connectionTimeoutMillis (src/dbs/postgres/postgres-pool.ts), plus slack for a loaded machine. */
const ANSWER_BOUND_MS = 5_000 + 5_000;

describe('Postgres outage', () => {
  let owned: OwnedPostgres;
  let postgres: PostgresProcess;
  let app: INestApplication;
  let url: string;
  let auth: Record<string, string>;
  let unknownKey: string;

  const send = (method: string, path: string, body?: unknown, headers = auth) =>
    rawRequest(url, method, path, body === undefined ? undefined : JSON.stringify(body), headers, ANSWER_BOUND_MS + 5_000);

  /** The request answers within the bound (no hang) with a 503 and a message saying to retry. */
  async function expectUnavailable(request: () => Promise<RawResponse>): Promise<RawResponse> {
    const started = Date.now();
    const res = await request();
    const took = Date.now() - started;
    expect({ status: res.status, body: res.json }).toMatchObject({ status: 503, body: { message: expect.stringMatching(/database is unavailable/) } });
    expect(took).toBeLessThan(ANSWER_BOUND_MS);
    return res;
  }

  beforeAll(async () => {
    owned = await ownPostgres('tracing-outage-pg-');
    postgres = await owned.start();
    app = await createApp({ DATABASE_URL: postgres.url, LOG_LEVEL: 'silent', USE_CLICKHOUSE: 'false', MIGRATE_ON_START: 'true' });
    await app.listen(0, '127.0.0.1');
    url = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    const keys = app.get(ApiKeyService);
    auth = { Authorization: `ApiKey ${(await keys.create('7d1e0e3c-0000-4000-8000-0000000000aa')).key}`, 'Content-Type': 'application/json' };
    // A key that was never used, so it is not in the guard's cache when Postgres goes.
    unknownKey = (await keys.create('7d1e0e3c-0000-4000-8000-0000000000bb')).key;
  }, 120_000);

  afterAll(async () => {
    closeRawAgent();
    await app?.close();
    await postgres?.stop();
    await owned?.remove();
  }, 60_000);

  it('answers 503 while Postgres is down, says why on /health, writes nothing, and recovers by itself', async () => {
    const before = makeSpan();
    expect((await send('POST', '/tracing/spans', { spans: [before] })).status).toBe(201);
    expect((await send('GET', '/health', undefined, {})).status).toBe(200);

    await postgres.stop();

    const during = makeSpan();
    await expectUnavailable(() => send('POST', '/tracing/spans', { spans: [during] }));
    await expectUnavailable(() => send('PUT', '/tracing/spans', { spans: [{ ...before, span_name: 'changed in the outage' }] }));
    await expectUnavailable(() => send('GET', `/tracing/traces/${before.trace_id}`));
    await expectUnavailable(() => send('POST', '/tracing/spans/query', {}));
    await expectUnavailable(() => send('POST', '/tracing/analytics/query', { windowing: { oldest: '2026-11-20T00:00:00Z', newest: '2026-11-21T00:00:00Z' } }));
    await expectUnavailable(() => send('POST', '/observability/nodes', { nodes: [makeNode()] }));
    await expectUnavailable(() =>
      send('POST', '/otlp/v1/traces', {
        resourceSpans: [{ scopeSpans: [{ spans: [{ traceId: during.trace_id, spanId: during.span_id, name: 'x', startTimeUnixNano: '1763632800000000000', endTimeUnixNano: '1763632801000000000' }] }] }],
      }),
    );
    // A key the API has not seen cannot be checked: that is the database being down, not a bad key.
    await expectUnavailable(() => send('GET', `/tracing/traces/${before.trace_id}`, undefined, { Authorization: `ApiKey ${unknownKey}` }));
    // Bad input is still refused as such, without Postgres.
    expect((await send('POST', '/tracing/spans', { spans: [{ ...during, trace_id: 'nope' }] })).status).toBe(400);

    const started = Date.now();
    const health = await send('GET', '/health', undefined, {});
    expect(Date.now() - started).toBeLessThan(ANSWER_BOUND_MS);
    expect(health.status).toBe(503);
    const postgresHealth = (health.json as { error: { postgres: { status: string; message: string } } }).error.postgres;
    expect(postgresHealth.status).toBe('down');
    expect(postgresHealth.message).toMatch(/^Postgres is unavailable: (could not connect \(ECONNREFUSED\)|connection lost|server shutting down.*\(57P0[123]\))$/);
    // /health is public: the driver's message, which names the host and port, stays in the log.
    expect(postgresHealth.message).not.toMatch(/127\.0\.0\.1|:\d{4,5}/);
    // Liveness does not follow Postgres: a probe there must not restart a replica that could not start again.
    expect(await send('GET', '/health/live', undefined, {})).toMatchObject({ status: 200, json: { status: 'ok' } });

    postgres = await owned.start();

    // The same process, the same pool: writes succeed again once connections can be made.
    const after = makeSpan();
    await eventually('a write to succeed after Postgres is back', async () => (await send('POST', '/tracing/spans', { spans: [after] })).status === 201, 30_000, 250);
    expect((await send('GET', '/health', undefined, {})).status).toBe(200);
    expect((await send('GET', `/tracing/spans/${after.trace_id}/${after.span_id}`)).status).toBe(200);
    expect((await send('GET', `/tracing/traces/${during.trace_id}`, undefined, { Authorization: `ApiKey ${unknownKey}` })).status).toBe(404);
    // Nothing the outage refused was stored, and what was there before is intact.
    expect((await send('GET', `/tracing/traces/${during.trace_id}`)).status).toBe(404);
    const kept = await send('GET', `/tracing/spans/${before.trace_id}/${before.span_id}`);
    expect((kept.json as { span: { span_name: string } }).span.span_name).toBe(before.span_name);
  }, 120_000);
});
