import { createClient } from '@clickhouse/client';
import { randomUUID } from 'node:crypto';
import { Client } from 'pg';
import request from 'supertest';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { clickHouseClientOptions } from '../../src/dbs/clickhouse/clickhouse-clients';
import { createTestApp } from '../support/app';
import { ApiProcess, ensureApiBuild, startApiProcess } from '../../scripts/cli/api-process';
import { dropClickHouseDatabase, testClickHouseConfig } from '../support/clickhouse';
import { makeSpan } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/** Another session holds the spans table until `release()`; resolves once a write is queued behind it. */
async function holdSpansTable(url: string) {
  const locker = new Client({ connectionString: url });
  await locker.connect();
  await locker.query('begin');
  await locker.query('lock table spans in access exclusive mode');
  return {
    writersWaiting: async () => {
      for (;;) {
        const { rows } = await locker.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()",
        );
        if (rows[0].n > 0) return;
        await new Promise((done) => setTimeout(done, 25));
      }
    },
    release: async () => {
      await locker.query('rollback');
      await locker.end();
    },
  };
}

/**
 * Writes still on their way to Postgres when shutdown begins: their clients
 * hung up, or shutdown stopped waiting for them. None may commit unseen by
 * the mirror, and none may hold shutdown beyond its deadlines.
 */
describe('shutdown with a write still waiting on Postgres', () => {
  it('closing the app waits for a mirrored write to settle, so once it commits ClickHouse has it', async () => {
    const t = await createTestApp({ MIRROR_SHUTDOWN_DEADLINE_MS: '5000' }, { clickhouse: true });
    const clickhouse = testClickHouseConfig(t.database.name);
    const auth = { Authorization: `ApiKey ${t.apiKey}` };
    const span = makeSpan();
    try {
      await request(t.url).post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);
      const lock = await holdSpansTable(t.database.url);
      const rename = request(t.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'renamed during shutdown' }] }).then((r) => r.status);
      await lock.writersWaiting();
      // Observed, not assumed: shutdown has reached the mirror's wait for writes still settling.
      const settled = jest.spyOn(t.mirror!.mirror, 'writesSettled');
      // As when the rename's client has hung up: the server has no connection left to wait for.
      const closing = t.app.close();
      for (const deadline = Date.now() + 20_000; settled.mock.calls.length === 0; await new Promise((done) => setTimeout(done, 25))) {
        if (Date.now() > deadline) throw new Error('app.close() never asked the mirror whether its writes had settled');
      }
      // While the lock holds the rename, both the mirror's wait and the close must still be pending.
      const pending = (promise: Promise<unknown>) => Promise.race([promise.then(() => 'done', () => 'done'), new Promise((done) => setTimeout(() => done('pending'), 250))]);
      expect(await pending(settled.mock.results[0].value as Promise<number>)).toBe('pending');
      expect(await pending(closing)).toBe('pending');
      await lock.release();
      await closing;
      expect(await settled.mock.results[0].value).toBe(0); // the rename settled in time, nothing left unsettled
      expect(await rename).toBe(200);

      const ch = createClient(clickHouseClientOptions(clickhouse.config, clickhouse.url));
      try {
        const both = await snapshotBothSides(t.database.db, ch, t.projectId);
        expect(both.pgSpans.map((s) => s.span_name)).toEqual(['renamed during shutdown']);
        expect(both.chSpans).toEqual(both.pgSpans);
      } finally {
        await ch.close();
      }
    } finally {
      await t.database.drop();
      await dropClickHouseDatabase(clickhouse.config, clickhouse.url);
    }
  }, 60_000);

  describe.each([
    ['off', false],
    ['on', true],
  ])('SIGTERM to the API process with the mirror %s, the write stuck behind a lock past SHUTDOWN_TIMEOUT_MS', (_mode, mirrored) => {
    const SHUTDOWN_TIMEOUT_MS = 1_500;
    let database: TestDatabase;
    let clickhouse: ReturnType<typeof testClickHouseConfig> | undefined;
    let api: ApiProcess;
    let key: string;
    const projectId = randomUUID();

    beforeAll(async () => {
      [database] = await Promise.all([createTestDatabase(), ensureApiBuild()]);
      key = (await new ApiKeyService(new ApiKeysRepository(database.db)).create(projectId)).key;
      clickhouse = mirrored ? testClickHouseConfig(database.name) : undefined;
      api = await startApiProcess({
        DATABASE_URL: database.url,
        MIGRATE_ON_START: 'false',
        SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
        LOG_LEVEL: 'info',
        ...(clickhouse && {
          USE_CLICKHOUSE: 'true',
          CLICKHOUSE_URL: clickhouse.url,
          CLICKHOUSE_USER: clickhouse.config.user,
          CLICKHOUSE_PASSWORD: clickhouse.config.password,
          CLICKHOUSE_DATABASE: clickhouse.config.database,
        }),
      });
    }, 180_000);

    afterAll(async () => {
      await api?.stop(5_000);
      await database?.drop();
      if (clickhouse) await dropClickHouseDatabase(clickhouse.config, clickhouse.url);
    }, 60_000);

    it('answers 503, rolls the write back and exits without waiting for the lock', async () => {
      const auth = { Authorization: `ApiKey ${key}` };
      const span = makeSpan();
      await request(api.url).post('/tracing/spans').set(auth).send({ spans: [span] }).expect(201);
      const lock = await holdSpansTable(database.url);
      let released = false;
      try {
        const rename = request(api.url).put('/tracing/spans').set(auth).send({ spans: [{ ...span, span_name: 'never committed' }] }).then((r) => r, (error: Error) => error);
        await lock.writersWaiting();
        const sigtermAt = Date.now();
        api.child.kill('SIGTERM');
        const answer = await rename;
        const exit = await api.exited;
        const exitedAfterMs = Date.now() - sigtermAt;

        expect(answer).toMatchObject({ status: 503 });
        expect(exit).toEqual({ code: 0, signal: null });
        // Its deadline, the answer's grace and teardown; the lock is still held, so nothing waited for it.
        expect(exitedAfterMs).toBeLessThan(SHUTDOWN_TIMEOUT_MS + 4_000);
        expect(api.logs()).toMatch(/requests still running after 1500 ms: ended their 1 Postgres sessions/);

        await lock.release();
        released = true;
        const stored = await database.db.selectFrom('spans').select('span_name').execute();
        expect(stored).toEqual([{ span_name: span.span_name }]);
        if (clickhouse) {
          // The create was flushed at shutdown; the rolled-back rename never reached the mirror, and nothing became a gap.
          expect(api.logs()).not.toMatch(/writes were still waiting on Postgres/);
          const ch = createClient(clickHouseClientOptions(clickhouse.config, clickhouse.url));
          try {
            const both = await snapshotBothSides(database.db, ch, projectId);
            expect(both.pgSpans).toHaveLength(1);
            expect(both.chSpans).toEqual(both.pgSpans);
          } finally {
            await ch.close();
          }
          expect(await database.db.selectFrom('mirror_gaps').select('id').execute()).toEqual([]);
        }
      } finally {
        if (!released) await lock.release();
      }
    }, 60_000);
  });
});
